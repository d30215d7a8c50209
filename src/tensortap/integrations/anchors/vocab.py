"""The anchor vocabulary: what an engine adapter says about a run, in engine-neutral terms.

An anchor is a name that means the same tensor in two engines (decoder-only transformers):
``embed``; per layer ``i``: ``layers.i.resid_pre`` (residual stream entering the layer),
``attn_in`` (normed input of attention), ``q``, ``k``, ``v``, ``o`` (o_proj output),
``attn_out`` (attention block output), ``resid_mid`` (resid_pre + attn_out), ``mlp_in``
(normed), ``gate``, ``up``, ``down`` (down_proj output), ``mlp_out``, ``resid_post``
(resid_mid + mlp_out); ``final_norm``; ``logits``; and the family-specific sublayers of
:data:`LAYER_ANCHORS`.

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

LAYER_ANCHORS = ("resid_pre", "attn_in", "q", "k", "v", "q_norm", "k_norm", "o", "attn_out",
                 "attn_post_norm", "resid_mid", "mlp_in", "router", "gate", "up", "shared_expert",
                 "down", "mlp_out", "mlp_post_norm", "resid_post")
"""Sublayer anchors in model order. Not every family has every one: ``q_norm``/``k_norm``
(per-head norms: Qwen3, Gemma 3), ``attn_post_norm``/``mlp_post_norm`` (Gemma's sandwich
norms), ``router`` (router logits) and ``shared_expert`` (the shared expert's down
projection, before its gate: Qwen2-MoE) exist where the family has them; a parallel-
residual layer (GPT-NeoX, GPT-J) has no ``resid_mid``."""


def anchor_order_key(name: str) -> tuple:
    """Model order: embed, layers in index order and sublayer order, final_norm, logits."""
    if name == "embed":
        return (0, 0, 0)
    if name.startswith("layers."):
        _, idx, sub = name.split(".", 2)
        return (1, int(idx), LAYER_ANCHORS.index(sub) if sub in LAYER_ANCHORS else 99)
    return (2, 0 if name == "final_norm" else 1, 0)


_FEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    # Each entry lists source groups; the first anchor of a group that the layer has is used.
    "attn_in": (("resid_pre",),), "q": (("attn_in",),), "k": (("attn_in",),), "v": (("attn_in",),),
    "q_norm": (("q",),), "k_norm": (("k",),),
    "o": (("q_norm", "q"), ("k_norm", "k"), ("v",)), "attn_out": (("q_norm", "q"), ("k_norm", "k"), ("v",)),
    "attn_post_norm": (("attn_out",),),
    "resid_mid": (("resid_pre",), ("attn_post_norm", "attn_out")),
    "mlp_in": (("resid_mid", "resid_pre"),),
    "router": (("mlp_in",),), "gate": (("mlp_in",),), "up": (("mlp_in",),),
    "shared_expert": (("mlp_in",),), "down": (("gate",), ("up",)),
    "mlp_out": (("mlp_in",),), "mlp_post_norm": (("mlp_out",),),
    "resid_post": (("resid_mid", "resid_pre"), ("mlp_post_norm", "mlp_out")),
}
_PARALLEL_POST = (("resid_pre",), ("attn_out",), ("mlp_out",))


def anchor_feeds(name: str, layers: list[int], present: set[str] | None = None,
                 parallel_residual: bool = False) -> list[str]:
    """The anchors an anchor is computed from (its "inputs", for amplification).

    ``present``: the anchors the runs have (None: assume the Llama set), so a family's
    own structure decides (Gemma's ``resid_mid`` comes from ``attn_post_norm``; GPT-2's
    ``down`` from ``up`` alone). ``parallel_residual``: ``resid_post = resid_pre +
    attn_out + mlp_out`` (GPT-NeoX, GPT-J).
    """
    if name.startswith("layers."):
        _, idx, sub = name.split(".", 2)
        i = int(idx)
        if sub == "resid_pre":
            prev = [x for x in layers if x < i]
            return [f"layers.{max(prev)}.resid_post"] if prev else ["embed"]
        groups = _PARALLEL_POST if parallel_residual and sub == "resid_post" else _FEEDS.get(sub, ())
        out = []
        for group in groups:
            names = [f"layers.{i}.{g}" for g in group]
            if present is None:
                out.append(names[0])
            elif (hit := next((n for n in names if n in present), None)) is not None:
                out.append(hit)
        return out
    if name == "final_norm":
        return [f"layers.{max(layers)}.resid_post"] if layers else []
    if name == "logits":
        return ["final_norm"]
    return []


def identity_rules(layer: int, present: set[str], parallel_residual: bool = False
                   ) -> list[tuple[str, tuple[str, ...]]]:
    """Residual-stream identities ``total == sum(terms)`` for one layer, by its structure."""
    p = f"layers.{layer}."
    has = lambda n: p + n in present  # noqa: E731
    pick = lambda *ns: next((p + n for n in ns if has(n)), None)  # noqa: E731
    rules: list[tuple[str, tuple[str, ...]]] = []
    if parallel_residual:
        if has("resid_post") and has("resid_pre") and has("attn_out") and has("mlp_out"):
            rules.append((p + "resid_post", (p + "resid_pre", p + "attn_out", p + "mlp_out")))
        return rules
    attn = pick("attn_post_norm", "attn_out")
    mlp = pick("mlp_post_norm", "mlp_out")
    if has("resid_mid") and has("resid_pre") and attn:
        rules.append((p + "resid_mid", (p + "resid_pre", attn)))
    if has("resid_post") and has("resid_mid") and mlp:
        rules.append((p + "resid_post", (p + "resid_mid", mlp)))
    return rules


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
    """``post(sum(terms)[..., cols])``, how its rows map to tokens, and its TP pieces.

    ``rows``: ``tokens`` (one row per token-table row) or ``last`` (one row per request,
    its last token). The columns are ``start:stop`` or, for layouts that interleave
    heads (GPT-NeoX's fused QKV), the explicit list ``cols``. ``heads_first``: the tensor
    is ``[batch, heads, seq, head_dim]`` (Gemma 3's q/k norms in transformers) and is
    read as ``[batch, seq, heads, head_dim]``. ``scale`` multiplies and ``softcap``
    applies ``cap * tanh(x / cap)`` after that (Gemma's embedding normalizer and final
    logit soft-capping, where one engine applies them outside the module).
    """

    terms: tuple[Ref, ...]
    start: int | None = None
    stop: int | None = None
    rows: str = "tokens"
    ranks: tuple[int, ...] = (0,)
    """Tensor-parallel unsharding: the slice is taken on each of these ranks and the
    pieces concatenated on the last dim (column-parallel outputs such as fused QKV)."""
    cols: tuple[int, ...] | None = None
    heads_first: bool = False
    scale: float | None = None
    softcap: float | None = None

    def describe(self) -> str:
        s = " + ".join(str(t) for t in self.terms)
        if self.heads_first:
            s = f"{s}.transpose(1, 2)"
        if self.start is not None or self.stop is not None:
            s += f"[..., {self.start or 0}:{self.stop if self.stop is not None else ''}]"
        if self.cols is not None:
            s += f"[..., {len(self.cols)} interleaved columns]"
        if len(self.ranks) > 1:
            s = f"concat over ranks {list(self.ranks)} of {s}"
        if self.scale is not None:
            s = f"{self.scale:.6g} * ({s})"
        if self.softcap is not None:
            s = f"softcap {self.softcap:g} of ({s})"
        return s

    def width(self, last_dim: int) -> int:
        """Columns taken from one rank's tensor whose last dimension is ``last_dim``."""
        if self.cols is not None:
            return len(self.cols)
        lo, hi, _ = slice(self.start, self.stop).indices(last_dim)
        return hi - lo

    def shape_of(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a term of ``shape`` has once read (``heads_first`` transposed)."""
        if self.heads_first and len(shape) == 4:
            return (shape[0], shape[2], shape[1], shape[3])
        return tuple(shape)


@dataclass
class AnchorSet:
    """What an adapter established for one run."""

    engine: str
    points: dict[tuple[int, str], AnchorExpr] = field(default_factory=dict)
    """(step, anchor) -> expression."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """anchor (or pattern) -> why this engine's run cannot provide it."""
    parallel_residual: bool = False
    """Attention and MLP read the same layer input (GPT-NeoX, GPT-J): no ``resid_mid``."""
    family: str = ""
    """What the adapter recognised (the config's ``model_type``), for notes."""

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
