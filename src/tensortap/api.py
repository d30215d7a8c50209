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


def open(path: str | Path) -> Run:  # noqa: A001 - mirrors tt.open in the design contract
    """Open a run directory (complete or incomplete) for reading."""
    return Run(path)

