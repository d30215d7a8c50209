"""The top-level Python API: ``tt.capture`` and ``tt.open``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from tensortap.capture.config import CaptureConfig, build_config
from tensortap.capture.session import CaptureSession
from tensortap.store.reader import Run


def capture(
    model: nn.Module,
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
    **options: Any,
) -> CaptureSession:
    """Capture the inputs and outputs of ``model``'s modules into the run directory ``out``.

    Use as a context manager; hooks exist only inside it::

        with tt.capture(model, "runs/a", modules=[r"layers\\.1\\.", "lm_head"], steps=[0, 1]):
            model.generate(**inputs, max_new_tokens=3)

    ``modules`` are regexes searched in qualified module names, with an optional ``:i``
    suffix to keep only the i-th call per step. ``config`` may be a dict, inline JSON or a
    file path (vLLM intermediate-logging key names are accepted). Other keyword options
    (``flush_interval``, ``pending_bytes``, ``on_full``, ``strict``, ``overwrite``…) are
    config keys; see docs/capture.md.
    """
    cfg = build_config(
        config, out=str(out) if out is not None else None, modules=modules, layers=layers,
        steps=steps, skip_steps=skip_steps, roles=roles, devices=devices,
        max_numel=max_numel, mode=mode, **options,
    )
    return CaptureSession(model, cfg)


def open(path: str | Path, format: str | None = None, trust_pickle: bool = False) -> Run:  # noqa: A001,A002
    """Open a run for reading: a tensortap run directory or another tool's dump.

    The layout is detected (``format`` forces one of ``tensortap.store.importers.FORMATS``:
    native, vllm-il, pass-dump, sglang-dumper, hf-debugger). Dumps made of ``.pt`` files
    are read with ``torch.load(weights_only=True)``; ``trust_pickle=True`` allows
    arbitrary pickles (which can run code) and is for dumps from a trusted source only.
    """
    from tensortap.store.importers.detect import open_any

    return open_any(path, format=format, trust_pickle=trust_pickle)

