"""Helpers shared by the anchor adapters: record look-ups and the run's model config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tensortap.integrations.anchors.vocab import Ref, RecordIndex
from tensortap.store.reader import Run

def first_ref(index: RecordIndex, step: int, module: str, role: str, paths: tuple[str, ...]) -> Ref | None:
    """The first of ``paths`` that has data for ``module``/``role`` at ``step``."""
    for p in paths:
        ref = Ref(module, role, p)
        if index.has(step, ref):
            return ref
    return None


def model_config(run: Run) -> dict[str, Any]:
    """The HF config of the captured model (run.json, else the model folder's config.json)."""
    model = run.info.get("model") or {}
    cfg = model.get("config") if isinstance(model, dict) else None
    if isinstance(cfg, dict) and cfg:
        return cfg
    eng = run.info.get("engine") or {}
    md = eng.get("model_dir") or eng.get("model") if isinstance(eng, dict) else None
    if md and (Path(md) / "config.json").is_file():
        try:
            return json.loads((Path(md) / "config.json").read_text())
        except (OSError, ValueError):
            pass
    return {}


def steps_of(index: RecordIndex) -> list[int]:
    """The steps that have records."""
    return sorted({k[0] for k in index.by_key})
