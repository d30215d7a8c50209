"""Capture inside one vLLM worker: attach to the loaded model, count engine steps, detach.

Runs in the worker process (or in the user's process when vLLM runs its worker
in-process). The module-level functions :func:`rpc_attach`, :func:`rpc_detach` and
:func:`rpc_status` are what ``LLM.collective_rpc`` ships to every worker: vLLM pickles
functions by reference, so they must live in an importable module, not in ``__main__``.

Everything done to vLLM objects here is per instance and undone on detach:
- compile-decorated modules get ``nn.Module.__call__`` back (hookable.py);
- the model runner's ``execute_model`` and ``_dummy_run`` are wrapped on the instance,
  so the session counts a step only for a forward that runs a real scheduled batch
  (never the profile, warm-up or dummy runs) and the token table can read that batch;
- in plugin mode the worker's ``shutdown`` is wrapped on the instance so the run is
  finalized when vLLM stops the worker.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any, Callable

import torch.nn as nn

from tensortap.capture.config import CaptureConfig, build_config
from tensortap.capture.session import CaptureSession
from tensortap.errors import TensortapError
from tensortap.integrations.vllm import compat, hookable
from tensortap.integrations.vllm.tokens import RequestIndexer, build_table

PREFIX_CACHING_WARNING = (
    "prefix caching is on: tokens served from the prefix cache skip the forward pass, so "
    "their rows are missing from this capture; start the engine with "
    "enable_prefix_caching=False (--no-enable-prefix-caching) for complete tensors")

# One capture per model runner (a process may hold several engines when vLLM runs
# workers in-process). Keyed by id(); the entry keeps the runner alive while attached.
_ACTIVE: dict[int, "WorkerCapture"] = {}


def _wrap_instance_method(obj: Any, name: str, make: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Shadow ``obj.name`` with ``make(original)`` on this instance only; return an undo."""
    original = getattr(obj, name)
    wrapper = make(original)
    had_own = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, wrapper)

    def undo() -> None:
        if vars(obj).get(name) is not wrapper:
            return  # someone wrapped it after us; leave their wrapper (ours just passes through)
        if had_own:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)

    return undo


def _without_termination_signals(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with SIGTERM/SIGINT held back (delivered right after).

    vLLM's worker turns SIGTERM into SystemExit (multiproc_executor.worker_main), and its
    executor sends one to workers still busy after a grace period: arriving while the
    run is being finalized, it would leave the status half written.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return fn()
    held = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        return fn()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class WorkerCapture:
    """One rank's capture: a CaptureSession on the runner's model plus the vLLM glue."""

    # Subclasses (the compile ladder's taps) swap in a session whose hooks survive
    # torch.compile and leave really-compiled decorated modules alone.
    session_class: type[CaptureSession] = CaptureSession
    skip_compiled_modules = False

    def __init__(self, worker: Any, config: CaptureConfig, mode: str,
                 prompt_base: int | None = None, engine_extra: dict[str, Any] | None = None) -> None:
        self.worker = worker
        self.runner = compat.model_runner(worker)
        self.model: nn.Module = compat.runner_model(self.runner)
        self.mode = mode
        self.layout = compat.parallel_layout(worker)
        self.rank = self.layout["rank"]
        engine = {"name": "vllm", "version": compat.vllm_version(), "mode": mode,
                  **compat.engine_settings(worker), "parallel": self.layout, **(engine_extra or {})}
        self.session = self.session_class(
            self.model, config, rank=self.rank, world_size=self.layout["world_size"],
            write_run_json=self.rank == 0, engine=engine, prepare_dir=False)
        self.session.parallel_extra = {k: self.layout[k] for k in ("tp_rank", "tp_size", "pp_rank", "pp_size")}
        self.indexer = RequestIndexer(prompt_base)
        self._in_execute = 0
        self._in_dummy = 0
        self._scheduler_output: Any = None
        self._undo: list[Callable[[], None]] = []
        self._swapped: list[tuple[nn.Module, type]] = []
        self._token_hook: Any = None
        self._atexit: Callable[[], None] | None = None
        self.summary: dict[str, Any] | None = None
        self.start_info: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        if compat.prefix_caching_on(self.worker):
            self.session.warnings.append(PREFIX_CACHING_WARNING)
        self._swapped = hookable.make_hooks_fire(self.model, skip_compiled=self.skip_compiled_modules)
        try:
            self.session.step_gate = self._is_real_step
            self.session.start()
            # After the session's own root pre-hook, so session.step is already this step's.
            self._token_hook = self.model.register_forward_pre_hook(self._record_tokens, with_kwargs=True)
            self._undo.append(_wrap_instance_method(self.runner, compat.RUNNER_STEP_METHOD, self._wrap_execute))
            self._undo.append(_wrap_instance_method(self.runner, compat.RUNNER_DUMMY_METHOD, self._wrap_dummy))
            if self.mode == "plugin":
                self._undo.append(_wrap_instance_method(self.worker, compat.WORKER_SHUTDOWN_METHOD, self._wrap_shutdown))
                # The process ending is the normal end of a served capture: finalize it as
                # complete (runs before the session's own "exited inside capture" handler).
                self._atexit = self._stop_at_exit
                atexit.register(self._atexit)
        except BaseException:
            try:
                self.session.stop()  # no-op unless it had started
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            self._teardown()
            raise
        _ACTIVE[id(self.runner)] = self
        for w in self.session.warnings:
            print(f"tensortap: warning: {w}", file=sys.stderr)
        self.start_info = {
            "rank": self.rank, "pid": os.getpid(), "planned": len(self.session.planned),
            "made_hookable": [type(m).__qualname__ for m, _ in self._swapped],
            "warnings": list(self.session.warnings)}
        return self.start_info

    def stop(self, error: str | None = None) -> dict[str, Any]:
        """Remove every hook and wrapper and finalize this rank's part of the run."""
        if self.summary is not None:
            return self.summary
        _ACTIVE.pop(id(self.runner), None)
        if error and self.session.error is None:
            self.session.error = error
        raised: str | None = None
        try:
            self.session.stop()
        except TensortapError as e:  # strict mode: planned modules never fired
            raised = str(e)
            if self.mode == "plugin":  # nobody else will see it
                print(f"tensortap: error: {raised}", file=sys.stderr)
        finally:
            self._teardown()
        self.summary = {
            "rank": self.rank, "status": "incomplete" if self.session.error else "complete",
            "reason": self.session.error, "records": self.session.records,
            "steps": self.session.steps_seen, "warnings": list(self.session.warnings),
            "never_fired": [p.name for p in self.session.planned if not self.session.fired.get(p.name)],
            "error": raised,
        }
        return self.summary

    def _teardown(self) -> None:
        if self._token_hook is not None:
            self._token_hook.remove()
            self._token_hook = None
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        hookable.restore(self._swapped)
        self._swapped = []
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    def _stop_at_exit(self) -> None:
        try:
            _without_termination_signals(self.stop)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- steps ----------------------------------------------------------------------
    def _is_real_step(self) -> bool:
        return self._in_execute > 0 and self._in_dummy == 0

    def _wrap_execute(self, original: Callable) -> Callable:
        def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            self._in_execute += 1
            self._scheduler_output = scheduler_output
            try:
                return original(scheduler_output, *args, **kwargs)
            finally:
                self._in_execute -= 1
                self._scheduler_output = None
        return execute_model

    def _wrap_dummy(self, original: Callable) -> Callable:
        def _dummy_run(*args: Any, **kwargs: Any) -> Any:
            self._in_dummy += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._in_dummy -= 1
        return _dummy_run

    def _wrap_shutdown(self, original: Callable) -> Callable:
        def shutdown(*args: Any, **kwargs: Any) -> Any:
            try:
                _without_termination_signals(self.stop)
            except Exception as e:  # noqa: BLE001 - never block vLLM's shutdown
                print(f"tensortap: could not finalize rank {self.rank}: {e}", file=sys.stderr)
            return original(*args, **kwargs)
        return shutdown

    def _record_tokens(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        session = self.session
        if not (session.active and self._is_real_step() and session.config.wants_step(session.step)):
            return
        try:
            table = build_table(self.runner, self._scheduler_output, kwargs, self.indexer)
            session.add_tokens(session.step, table)
        except Exception as e:  # noqa: BLE001 - never break the engine
            session.fail(f"token table failed at step {session.step}: {type(e).__name__}: {e}")


# -- functions shipped to workers by collective_rpc -----------------------------------
def attach(worker: Any, config: CaptureConfig, mode: str, prompt_base: int | None = None,
           engine_extra: dict[str, Any] | None = None) -> WorkerCapture:
    """Start capturing in this worker. Raises if the engine cannot be captured."""
    worker = compat.unwrap_worker(worker)
    runner = compat.model_runner(worker)
    if id(runner) in _ACTIVE:
        raise TensortapError("a tensortap capture is already attached to this engine "
                             "(is TENSORTAP_DIR/TENSORTAP_CONFIG set for the plugin?)")
    problems = compat.runner_problems(worker) + compat.layout_problems(worker)
    if problems:
        raise TensortapError("cannot capture this engine: " + "; ".join(problems))
    problems = compat.eager_problems(worker)
    if problems:
        raise TensortapError(
            "cannot capture this engine: " + "; ".join(problems) + ". Module hooks do not run "
            "inside compiled graphs or CUDA-graph replays. Start it with enforce_eager=True "
            "(--enforce-eager), or use the tensortap plugin (TENSORTAP_DIR), which does that for you")
    cap = WorkerCapture(worker, config, mode, prompt_base, engine_extra)
    try:
        cap.start()
    except hookable.CompiledModuleError as e:
        raise TensortapError(f"cannot capture this engine: {e}; start it with enforce_eager=True") from None
    return cap


def active_capture(worker: Any) -> WorkerCapture | None:
    try:
        return _ACTIVE.get(id(compat.model_runner(compat.unwrap_worker(worker))))
    except RuntimeError:
        return None


def rpc_attach(worker: Any, config: dict[str, Any], prompt_base: int | None,
               engine_extra: dict[str, Any] | None) -> dict[str, Any]:
    """``collective_rpc`` entry: attach; returns a plain dict (errors as ``{"error": ...}``).

    Errors are returned, not raised, so one refusing rank does not leave the others
    attached: the caller detaches everyone and raises in the user's process.
    """
    try:
        cfg = build_config(config, source="capture config")
        cap = attach(worker, cfg, "offline", prompt_base, engine_extra)
        return {"ok": True, **cap.start_info}
    except TensortapError as e:
        return {"ok": False, "error": str(e)}
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def rpc_detach(worker: Any, error: str | None = None) -> dict[str, Any] | None:
    """``collective_rpc`` entry: finalize this worker's capture (None if none was attached)."""
    cap = active_capture(worker)
    return cap.stop(error) if cap is not None else None


def rpc_status(worker: Any) -> dict[str, Any] | None:
    """``collective_rpc`` entry: where this worker's capture stands (None if not attached)."""
    cap = active_capture(worker)
    if cap is None:
        return None
    s = cap.session
    return {"rank": cap.rank, "step": s.step, "records": s.records, "active": s.active, "error": s.error}


def rpc_flush(worker: Any) -> bool:
    """``collective_rpc`` entry: block until this worker's captured records are on disk."""
    cap = active_capture(worker)
    if cap is not None:
        cap.session.flush()
    return cap is not None
