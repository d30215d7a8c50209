"""``capture(llm, out, ...)``: capture an existing ``vllm.LLM`` from the user's process.

The hooks live in vLLM's workers, so this object only sends them orders through
``LLM.collective_rpc`` (attach, flush, detach) and gathers their answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensortap.capture.config import CaptureConfig, build_config
from tensortap.capture.session import prepare_out_dir
from tensortap.errors import TensortapError
from tensortap.integrations.vllm import compat, worker as worker_rpc
from tensortap.store.reader import Run

_RPC_HELP = (
    "vLLM refused to send tensortap's worker functions to its engine process: its "
    "engine-core channel pickles functions only when VLLM_ALLOW_INSECURE_SERIALIZATION=1. "
    "Create the LLM with VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine core in this process) or "
    "VLLM_ALLOW_INSECURE_SERIALIZATION=1 set in the environment, or capture with the plugin "
    "(TENSORTAP_DIR) or tensortap.integrations.vllm.capture_generate instead")


class VllmCapture:
    """A capture of every worker of one ``vllm.LLM``; use as a context manager.

    ``ranks`` holds what each worker reported when it attached, ``summary`` what each
    reported when it finished (status, records, steps, never-fired modules).
    """

    def __init__(self, llm: Any, config: CaptureConfig, engine_extra: dict[str, Any] | None = None) -> None:
        if not config.out:
            raise TensortapError("capture needs an output directory (out / output_dir)")
        self.llm = llm
        self.config = config
        self.path = Path(config.out).resolve()
        self.engine_extra = dict(engine_extra or {})
        self.ranks: list[dict[str, Any]] = []
        self.summary: list[dict[str, Any]] = []
        self._attached = False
        self._run_lock: Any = None  # the run's writer lock, held by this (driver) process

    # -- rpc ----------------------------------------------------------------------------
    def _rpc(self, fn: Any, *args: Any) -> list[Any]:
        try:
            return self.llm.collective_rpc(fn, args=args)
        except TypeError as e:
            if compat.is_serialization_refusal(e):
                raise TensortapError(_RPC_HELP) from None
            raise

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "VllmCapture":
        self._run_lock = prepare_out_dir(self.path, self.config.overwrite)
        try:
            return self._start()
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    def _start(self) -> "VllmCapture":
        config = self.config.model_dump(mode="json", exclude={"overwrite"})
        config["out"] = str(self.path)
        # Requests of this LLM are numbered by its counter; rows are mapped to prompt
        # indices counted from here (the first prompt sent inside the capture is 0).
        base = compat.llm_request_counter(self.llm)
        answers = self._rpc(worker_rpc.rpc_attach, config, base, self.engine_extra)
        self.ranks = [a for a in answers if isinstance(a, dict)]
        failed = [a["error"] for a in self.ranks if not a.get("ok")]
        if failed or len(self.ranks) != len(answers):
            self._rpc(worker_rpc.rpc_detach, "capture refused by a worker")
            raise TensortapError(failed[0] if failed else "a vLLM worker gave no answer to attach")
        self._attached = True
        if any(w == worker_rpc.PREFIX_CACHING_WARNING for a in self.ranks for w in a.get("warnings", [])):
            # Entries cached before the capture would hide whole prompts; drop them.
            compat.llm_reset_prefix_cache(self.llm)
        return self

    def status(self) -> list[dict[str, Any]]:
        """Where each worker's capture stands: rank, current step, records, active, error."""
        if not self._attached:
            return []
        return [a for a in self._rpc(worker_rpc.rpc_status) if isinstance(a, dict)]

    def flush(self) -> None:
        """Block until every worker's captured records are durable on disk."""
        if self._attached:
            self._rpc(worker_rpc.rpc_flush)

    def stop(self, error: str | None = None) -> list[dict[str, Any]]:
        """Finalize the run in every worker; raises in strict mode if modules never fired."""
        if not self._attached:
            return self.summary
        self._attached = False
        try:
            answers = self._rpc(worker_rpc.rpc_detach, error)
        finally:
            self._release_lock()
        self.summary = sorted((a for a in answers if isinstance(a, dict)), key=lambda a: a["rank"])
        strict = [a["error"] for a in self.summary if a.get("error")]
        if strict:
            raise TensortapError(strict[0])
        return self.summary

    def open(self) -> Run:
        """Open the run this capture wrote."""
        return Run(self.path)

    def __enter__(self) -> "VllmCapture":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        error = None
        if exc[0] is not None:
            error = f"the captured program raised {exc[0].__name__}: {exc[1]}"
        self.stop(error)


def capture(
    llm: Any,
    out: str | Path | None = None,
    *,
    modules: str | list[str] | None = None,
    layers: list[int] | None = None,
    steps: list[int] | None = None,
    skip_steps: int | None = None,
    roles: list[str] | None = None,
    devices: list[str] | None = None,
    max_numel: int | None = None,
    mode: str | None = None,
    config: CaptureConfig | dict[str, Any] | str | Path | None = None,
    engine_extra: dict[str, Any] | None = None,
    **options: Any,
) -> VllmCapture:
    """Capture the modules of a running ``vllm.LLM`` in every one of its workers.

    Use as a context manager around ``llm.generate``::

        llm = LLM(model=path, enforce_eager=True, enable_prefix_caching=False)
        with tt.vllm.capture(llm, "runs/v", modules=[r"layers\\.\\d+$"]):
            llm.generate(prompts, params)

    One step is one model forward of a real batch in a worker (profile and dummy runs
    are not counted); each step gets a token table (request, position, token id of each
    row). Filters and options are those of :func:`tensortap.capture`. The engine must
    run eagerly (``enforce_eager=True``); with prefix caching on, the run carries a
    warning. vLLM must be able to send functions to its workers: create the LLM with
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` or ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``.
    """
    cfg = build_config(
        config, out=str(out) if out is not None else None, modules=modules, layers=layers,
        steps=steps, skip_steps=skip_steps, roles=roles, devices=devices,
        max_numel=max_numel, mode=mode, **options,
    )
    return VllmCapture(llm, cfg, engine_extra)
