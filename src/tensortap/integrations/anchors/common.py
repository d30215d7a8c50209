"""Helpers shared by the anchor adapters: layer discovery and record look-ups."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tensortap.integrations.anchors.vocab import Ref, RecordIndex
from tensortap.store.reader import Run

_LAYER = re.compile(r"^(?P<base>.*?)\.?layers\.(?P<idx>\d+)$")


def decoder_layers(index: RecordIndex) -> dict[int, str]:
    """Layer index -> qualified name, from the modules that have records."""
    found: dict[int, str] = {}
    mods = {k[1] for k in index.by_key}
    for m in mods:
        mm = _LAYER.match(m)
        if mm:
            found[int(mm.group("idx"))] = m
    # A module is only a layer if something also lives under it or it has records itself.
    return dict(sorted(found.items()))


def model_base(layer_name: str) -> str:
    """``model.layers.3`` -> ``model`` (where embed_tokens and norm live)."""
    return layer_name.rsplit(".layers.", 1)[0] if ".layers." in layer_name else ""


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
    return sorted({k[0] for k in index.by_key})
