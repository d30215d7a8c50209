"""A capture session: plans hooks on a model, copies tensors at hook time, writes a run.

Rules kept here (DESIGN.md): no hook exists before ``start()`` or after ``stop()``;
filters are resolved when hooks are planned; the stored value is a copy taken in the
hook; a failure inside a hook or the writer stops capturing and marks the run
incomplete but never raises into the observed program.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from tensortap import kernels
from tensortap.version import __version__
from tensortap.capture.config import CaptureConfig
from tensortap.capture.flatten import flatten, flatten_inputs
from tensortap.capture.pipeline import WriterPipeline
from tensortap.capture.plan import PlannedModule, check_plan, plan_modules
from tensortap.errors import ConfigError, TensortapError
from tensortap.store import format as fmt
from tensortap.store import runlock
from tensortap.store.jsonio import atomic_write_json, release_space, reserve_space
from tensortap.store.writer import RankWriter

# safetensors cannot store these; such tensors keep statistics only.
_UNSTORABLE = {torch.complex64, torch.complex128, torch.complex32}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_out_dir(out: Path, overwrite: bool) -> bool:
    """Raise ConfigError if ``out`` cannot become a run folder; True if an old run must
    be replaced. Touches nothing, so callers can check before loading a large model."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(p.name != runlock.LOCK_NAME for p in out.iterdir()):
        if not overwrite:
            pid = runlock.writer_alive(out)
            if pid is not None:
                raise ConfigError(f"{out}: a capture by process {pid} is writing this run; a run has "
                                  "one writer: wait for it to finish, or choose another output directory")
            raise ConfigError(f"output directory {out} exists and is not empty; "
                              "choose another path or pass --overwrite (overwrite=True)")
        if not (out / fmt.RUN_JSON).exists():
            raise ConfigError(f"refusing to overwrite {out}: it is not a tensortap run (no run.json)")
        runlock.refuse_if_written(out)
        return True
    return False


def prepare_out_dir(out: Path, overwrite: bool) -> runlock.RunLock:
    """Create the run folder and take its writer lock (store/runlock.py), which the caller
    holds for as long as it writes; refuse to mix runs, to replace a run that a live
    process is writing, or to delete anything that is not a run."""
    if check_out_dir(out, overwrite):
        # Move the old run aside first (atomic), so nobody finds a half-deleted run here.
        trash = out.with_name(f".{out.name}.replaced-{os.getpid()}-{time.time_ns()}")
        os.rename(out, trash)
        shutil.rmtree(trash, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    lock = runlock.acquire(out)
    # Two writers that both found the folder empty: the lock picks one; the other sees
    # the winner's files (or the winner's lock) and stops here.
    if any(p.name != runlock.LOCK_NAME for p in out.iterdir()):
        lock.release()
        raise ConfigError(f"{out}: another capture started writing here at the same time; "
                          "a run has one writer: choose another output directory")
    if lock.stale_pid:
        print(f"tensortap: note: {out}: the previous writer (process {lock.stale_pid}) is gone; "
              "its lock was stale", file=sys.stderr)
    return lock


def model_description(model: nn.Module) -> dict[str, Any]:
    desc: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    cfg = getattr(model, "config", None)
    to_dict = getattr(cfg, "to_dict", None)
    if callable(to_dict):
        try:
            import json

            desc["config"] = json.loads(json.dumps(to_dict(), default=str))
        except Exception:  # noqa: BLE001 - a config we cannot serialise is just left out
            pass
    return desc


class CaptureSession:
    """Hooks on one model (one rank) writing to one run directory.

    Use ``tensortap.capture(...)`` rather than building this directly.
    """

    def __init__(
        self,
        model: nn.Module,
        config: CaptureConfig,
        rank: int = 0,
        world_size: int = 1,
        write_run_json: bool = True,
        engine: dict[str, Any] | None = None,
        prepare_dir: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"capture needs a torch.nn.Module, got {type(model).__name__}")
        if not config.out:
            raise ConfigError("capture needs an output directory (out / output_dir)")
        self.model = model
        self.config = config
        self.out = Path(config.out)
        self.rank = rank
        self.world_size = world_size
        self.write_run_json = write_run_json
        self.engine = dict(engine or {})
        self.prepare_dir = prepare_dir
        self._run_lock: runlock.RunLock | None = None
        self.planned: list[PlannedModule] = []
        self.fired: dict[str, int] = {}
        self.warnings: list[str] = []
        self.error: str | None = None
        self.active = False
        self.records = 0
        self.steps_seen = 0
        self._handles: list[Any] = []
        self._calls: dict[str, int] = {}
        self._stacks: dict[str, list[int]] = {}
        self._step = -1
        self._step_wanted = False
        self._seq = 0
        self._lock = threading.Lock()
        self._pipeline: WriterPipeline | None = None
        self._reserve: Path | None = None
        self._started_at = 0.0
        self._atexit: Callable[[], None] | None = None
        self._want_inputs = "inputs" in config.roles
        self._want_outputs = "outputs" in config.roles
        self._devices = set(config.devices) if config.devices else None
        self.step_listeners: list[Callable[[int], None]] = []
        self.step_gate: Callable[[], bool] | None = None
        """Engine adapters set this to exclude forwards (warm-up, dummy runs) from step counting."""
        self.parallel_extra: dict[str, Any] = {}
        """Engine adapters add their layout here (tp_rank, tp_size, pp_rank, pp_size) for run.json."""

    # -- public -------------------------------------------------------------------
    @property
    def step(self) -> int:
        """The current step (root forward call index), -1 before the first."""
        return self._step

    @property
    def path(self) -> Path:
        return self.out

    def _release_lock(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    def start(self) -> "CaptureSession":
        try:
            return self._start()
        except BaseException:
            # A session that failed to start must not keep the run locked (a retry in this
            # process would find it busy).
            self._release_lock()
            raise

    def _start(self) -> "CaptureSession":
        # Filters that select nothing are refused before anything is written.
        planned = plan_modules(self.model, self.config)
        plan_warnings = check_plan(self.model, self.config, planned)
        if self.prepare_dir:
            self._run_lock = prepare_out_dir(self.out, self.config.overwrite)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
        # Now, not in the writer thread during the first step: loading numba takes ~0.5 s
        # of a core and the GIL (a few seconds the first time on a machine: compiling).
        kernels.load()
        writer = RankWriter(self.out, self.rank, durable=self.config.durable, direct=self.config.direct_io)
        self._pipeline = WriterPipeline(
            writer,
            flush_interval=self.config.flush_interval,
            shard_bytes=self.config.shard_bytes,
            pending_budget=self.config.pending_bytes,
            on_full=self.config.on_full,
            with_sketch=self.config.mode == "stats",
        )
        self._started_at = time.time()
        if self.write_run_json:
            self._write_run_json("incomplete", "capture in progress")
        writer.write_status({"status": "incomplete", "reason": "capture in progress", "pid": os.getpid()})
        # On a full disk the closing status.json/run.json must still fit: keep room for them.
        self._reserve = reserve_space(writer.dir)
        self.planned = planned
        self.warnings += plan_warnings
        self._install_hooks()
        self.active = True
        self._atexit = self._at_exit
        atexit.register(self._atexit)
        return self

    def stop(self) -> None:
        """Remove every hook, write what is pending, and finalize run.json."""
        if self._pipeline is None:
            return
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.active = False
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        pipeline, self._pipeline = self._pipeline, None
        pipeline.close()
        if pipeline.error and not self.error:
            self.error = pipeline.error
        never = [p.name for p in self.planned if self.fired.get(p.name, 0) == 0]
        if never:
            shown = ", ".join(repr(n) for n in never[:10]) + (" …" if len(never) > 10 else "")
            self.warnings.append(
                f"{len(never)} planned module(s) never fired (compiled region, CUDA graph, "
                f"forward() called directly, or not used): {shown}")
        never_ran = sorted(s for s in (self.config.steps or []) if s > self._step)
        if never_ran:
            ran = f"steps 0-{self._step}" if self._step >= 0 else "no step"
            self.warnings.append(f"planned step(s) {never_ran} never ran (the model ran {ran})")
        if pipeline.dropped:
            self.warnings.append(f"dropped {pipeline.dropped} record(s) "
                                 f"({pipeline.dropped_bytes} bytes): writer fell behind (on_full=drop)")
        status = "incomplete" if self.error else "complete"
        summary = {
            "status": status, "reason": self.error, "pid": os.getpid(),
            "records": self.records, "steps": self.steps_seen,
            "bytes_written": pipeline.writer.bytes_written,
            "dropped_records": pipeline.dropped, "dropped_bytes": pipeline.dropped_bytes,
            "peak_pending_bytes": pipeline.peak_pending,
            "direct_io": pipeline.writer.direct, "direct_io_refused": pipeline.writer.direct_refused,
            "stats_kernel": kernels.status(),
            "never_fired": never, "warnings": self.warnings,
        }
        release_space(self._reserve)
        self._reserve = None
        try:
            pipeline.writer.write_status(summary)
            if self.write_run_json:
                self._write_run_json(status, self.error, summary)
        except OSError as e:
            self.error = self.error or f"could not finalize run: {e}"
        self._release_lock()
        for w in self.warnings:
            print(f"tensortap: warning: {w}", file=sys.stderr)
        if self.error:
            print(f"tensortap: capture stopped early, run marked incomplete: {self.error}", file=sys.stderr)
        if self.config.strict and never:
            raise TensortapError(f"strict capture: {len(never)} planned module(s) never fired: "
                                 + ", ".join(never[:10]))
        if self.config.strict and never_ran:
            raise TensortapError(f"strict capture: planned step(s) {never_ran} never ran")

    def set_next_step(self, step: int) -> None:
        """Number the next root forward ``step`` (replays that skip steps keep the
        reference's numbering)."""
        self._step = step - 1

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record captured so far is durable."""
        if self._pipeline is not None:
            self._pipeline.flush(timeout)

    def add_tokens(self, step: int, table: dict[str, Any]) -> None:
        """Attach a token table to a step (engine adapters call this)."""
        if self._pipeline is not None and self.active:
            self._pipeline.submit_tokens({"step": step, **table})

    def fail(self, reason: str) -> None:
        """Stop capturing (hooks become no-ops) and remember why; never raises."""
        if self.error is None:
            self.error = reason
            print(f"tensortap: capture stopped: {reason}", file=sys.stderr)
        self.active = False

    def __enter__(self) -> "CaptureSession":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None and self.error is None:
            self.error = f"the captured program raised {exc[0].__name__}: {exc[1]}"
        self.stop()

    # -- run.json -----------------------------------------------------------------
    def _write_run_json(self, status: str, reason: str | None, summary: dict | None = None) -> None:
        info: dict[str, Any] = {
            "format_version": fmt.FORMAT_VERSION,
            "tool": "tensortap",
            "versions": {"tensortap": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "created": self._started_at,
            "model": model_description(self.model),
            "engine": self.engine or {"name": "torch"},
            "capture": self.config.model_dump(mode="json", exclude={"overwrite"}),
            "parallel": {"rank": self.rank, "world_size": self.world_size, **self.parallel_extra},
            "status": status,
            "reason": reason,
            "warnings": list(self.warnings),
        }
        if summary is not None:
            info["finished"] = time.time()
            info["summary"] = summary
        atomic_write_json(self.out / fmt.RUN_JSON, info, durable=self.config.durable)

    def _at_exit(self) -> None:
        try:
            if self._pipeline is not None:
                self.error = self.error or "the process exited inside the capture context"
                self.stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- hooks --------------------------------------------------------------------
    def _install_hooks(self) -> None:
        # Registered first so the step counter moves before the root's own capture hook runs.
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre))
        for p in self.planned:
            self._handles.append(p.module.register_forward_pre_hook(self._make_pre(p), with_kwargs=True))
            self._handles.append(p.module.register_forward_hook(self._make_post(p), with_kwargs=True))

    def _root_pre(self, module: nn.Module, args: tuple) -> None:
        if self.step_gate is not None and not self._gate_allows():
            self._step_wanted = False
            return
        self._step += 1
        self.steps_seen += 1
        self._calls.clear()
        self._stacks.clear()
        self._step_wanted = self.config.wants_step(self._step)
        if self._pipeline is not None:
            self._pipeline.new_step()  # copies are shared between records of one step only
        for listener in self.step_listeners:
            try:
                listener(self._step)
            except Exception as e:  # noqa: BLE001
                self.fail(f"step listener failed: {type(e).__name__}: {e}")

    def _gate_allows(self) -> bool:
        try:
            return bool(self.step_gate())
        except Exception as e:  # noqa: BLE001
            self.fail(f"step gate failed: {type(e).__name__}: {e}")
            return False

    def _make_pre(self, p: PlannedModule):
        name = p.name
        calls = p.calls

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            self._stacks.setdefault(name, []).append(call)
            self.fired[name] = self.fired.get(name, 0) + 1
            if (self.active and self._step_wanted and self._want_inputs
                    and (calls is None or call in calls)):
                self._guarded(name, lambda: self._emit_all(name, call, "input", flatten_inputs(args, kwargs)))

        return pre

    def _make_post(self, p: PlannedModule):
        name = p.name
        calls = p.calls

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._stacks.get(name)
            call = stack.pop() if stack else max(self._calls.get(name, 1) - 1, 0)
            if (self.active and self._step_wanted and self._want_outputs
                    and (calls is None or call in calls)):
                self._guarded(name, lambda: self._emit_all(name, call, "output", flatten(output)))

        return post

    def _guarded(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - never break the observed program
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self.fail(f"hook on {name!r} failed: {type(e).__name__}: {e} "
                      f"({os.path.basename(tb.filename)}:{tb.lineno})")

    def _emit_all(self, module: str, call: int, role: str, items) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        if pipeline.error is not None:
            self.fail(pipeline.error)
            return
        for path, value in items:
            self._emit(pipeline, module, call, role, path, value)

    def _emit(self, pipeline: WriterPipeline, module: str, call: int, role: str, path: str, value: Any) -> None:
        with self._lock:
            seq = self._seq
            self._seq += 1
        rec: dict[str, Any] = {"step": self._step if self._step >= 0 else 0, "module": module,
                               "call": call, "role": role, "path": path, "seq": seq}
        if not isinstance(value, torch.Tensor):
            rec["kind"] = "value"
            rec["value"] = value
            if pipeline.submit(rec, None, False):
                self.records += 1
            return
        device = str(value.device)
        if self._devices is not None and device not in self._devices and value.device.type not in self._devices:
            return
        rec["dtype"] = _dtype_name(value.dtype)
        rec["shape"] = list(value.shape)
        rec["device"] = device
        if value.is_meta:
            rec["kind"] = "stats"
            rec["extra"] = {"skipped": "meta tensor"}
            if pipeline.submit(rec, None, False):
                self.records += 1
            return
        store = self.config.mode == "full" and value.dtype not in _UNSTORABLE
        if store and self.config.max_numel is not None and value.numel() > self.config.max_numel:
            store = False
            rec["extra"] = {"skipped": f"numel {value.numel()} > max_numel {self.config.max_numel}"}
        rec["kind"] = "tensor" if store else "stats"
        # The pipeline copies the tensor now (into budgeted, pooled memory), so later
        # in-place kernels cannot change what is saved.
        if pipeline.submit_tensor(rec, value, store):
            self.records += 1
