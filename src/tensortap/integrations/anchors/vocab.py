"""The anchor vocabulary: what an engine adapter says about a run, in engine-neutral terms.

An anchor is a name that means the same tensor in two engines (decoder-only transformers):
``embed``; per layer ``i``: ``layers.i.resid_pre`` (residual stream entering the layer),
``attn_in`` (normed input of attention), ``q``, ``k``, ``v``, ``o`` (o_proj output),
``attn_out`` (attention block output), ``resid_mid`` (resid_pre + attn_out), ``mlp_in``
(normed), ``gate``, ``up``, ``down`` (down_proj output), ``mlp_out``, ``resid_post``
(resid_mid + mlp_out); ``final_norm``; ``logits``.

An adapter (integrations/anchors/hf.py, vllm.py; registered in integrations/registry.py)
reads a run's records through a :class:`RecordIndex` and returns an :class:`AnchorSet`:
per step, which records make each anchor (:class:`AnchorExpr`: a sum of records,
optionally sliced on the last dimension, with how its rows map to tokens). The compare
layer evaluates and aligns them (compare/anchors.py, compare/anchor_mapping.py). This
module imports no engine and nothing above the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tensortap.store.reader import Run
from tensortap.store.record import Record

LAYER_ANCHORS = ("resid_pre", "attn_in", "q", "k", "v", "o", "attn_out", "resid_mid",
                 "mlp_in", "gate", "up", "down", "mlp_out", "resid_post")


def anchor_order_key(name: str) -> tuple:
    """Model order: embed, layers in index order and sublayer order, final_norm, logits."""
    if name == "embed":
        return (0, 0, 0)
    if name.startswith("layers."):
        _, idx, sub = name.split(".", 2)
        return (1, int(idx), LAYER_ANCHORS.index(sub) if sub in LAYER_ANCHORS else 99)
    return (2, 0 if name == "final_norm" else 1, 0)


_FEEDS = {
    "attn_in": ("resid_pre",), "q": ("attn_in",), "k": ("attn_in",), "v": ("attn_in",),
    "o": ("q", "k", "v"), "attn_out": ("q", "k", "v"), "resid_mid": ("resid_pre", "attn_out"),
    "mlp_in": ("resid_mid",), "gate": ("mlp_in",), "up": ("mlp_in",), "down": ("gate", "up"),
    "mlp_out": ("mlp_in",), "resid_post": ("resid_mid", "mlp_out"),
}


def anchor_feeds(name: str, layers: list[int]) -> list[str]:
    """The anchors an anchor is computed from (its "inputs", for amplification)."""
    if name.startswith("layers."):
        _, idx, sub = name.split(".", 2)
        i = int(idx)
        if sub == "resid_pre":
            prev = [x for x in layers if x < i]
            return [f"layers.{max(prev)}.resid_post"] if prev else ["embed"]
        return [f"layers.{i}.{f}" for f in _FEEDS.get(sub, ())]
    if name == "final_norm":
        return [f"layers.{max(layers)}.resid_post"] if layers else []
    if name == "logits":
        return ["final_norm"]
    return []


@dataclass(frozen=True)
class Ref:
    """One raw record of a step, by module/role/path (call 0 unless given)."""

    module: str
    role: str
    path: str
    call: int = 0

    def __str__(self) -> str:
        p = f".{self.path}" if self.path else ""
        return f"{self.module}.{self.role}{p}"


@dataclass(frozen=True)
class AnchorExpr:
    """``sum(terms)[..., start:stop]``; ``rows`` says how rows map to tokens:
    ``tokens`` (one row per token-table row) or ``last`` (one row per request, its last token)."""

    terms: tuple[Ref, ...]
    start: int | None = None
    stop: int | None = None
    rows: str = "tokens"
    ranks: tuple[int, ...] = (0,)
    """Tensor-parallel unsharding: the slice is taken on each of these ranks and the
    pieces concatenated on the last dim (column-parallel outputs such as fused QKV)."""

    def describe(self) -> str:
        s = " + ".join(str(t) for t in self.terms)
        if self.start is not None or self.stop is not None:
            s += f"[..., {self.start or 0}:{self.stop if self.stop is not None else ''}]"
        if len(self.ranks) > 1:
            s = f"concat over ranks {list(self.ranks)} of {s}"
        return s


@dataclass
class AnchorSet:
    """What an adapter established for one run."""

    engine: str
    points: dict[tuple[int, str], AnchorExpr] = field(default_factory=dict)
    """(step, anchor) -> expression."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """anchor (or pattern) -> why this engine's run cannot provide it."""

    def anchors(self) -> list[str]:
        return sorted({a for _, a in self.points}, key=anchor_order_key)

    def steps(self) -> list[int]:
        return sorted({s for s, _ in self.points})


class RecordIndex:
    """Fast lookup of a run's records by (step, module, call, role, path)."""

    def __init__(self, run: Run, rank: int = 0) -> None:
        self.run = run
        self.rank = rank
        self.by_key: dict[tuple, Record] = {r.key: r for r in run.records(rank=rank)}
        self._other: dict[int, dict[tuple, Record]] = {}

    def get(self, step: int, ref: Ref, rank: int | None = None) -> Record | None:
        key = (step, ref.module, ref.call, ref.role, ref.path)
        if rank is None or rank == self.rank:
            return self.by_key.get(key)
        if rank not in self._other:
            self._other[rank] = {r.key: r for r in self.run.records(rank=rank)}
        return self._other[rank].get(key)

    def has(self, step: int, ref: Ref) -> bool:
        rec = self.get(step, ref)
        return rec is not None and rec.has_data
