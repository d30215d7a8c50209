"""Engine adapters that map a run's raw records to anchors (see tensortap.compare.anchors).

They read records and run.json only; they never import the engine, so runs can be
compared on a machine without transformers or vLLM.
"""

from __future__ import annotations

from tensortap.compare.anchors import AnchorSet, RecordIndex
from tensortap.compare.mapping import engine_name
from tensortap.errors import TensortapError
from tensortap.store.reader import Run

__all__ = ["build_anchor_set", "engine_name"]


def build_anchor_set(run: Run, index: RecordIndex | None = None) -> AnchorSet:
    """Anchors of ``run`` by its engine's adapter."""
    from tensortap.integrations.anchors import hf, vllm

    index = index or RecordIndex(run)
    name = engine_name(run)
    if name == "vllm":
        return vllm.anchor_set(run, index)
    if name in ("hf", "torch"):
        return hf.anchor_set(run, index)
    raise TensortapError(f"{run.path}: no anchor adapter for engine {name!r} (known: hf, vllm)")
