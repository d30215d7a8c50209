"""One decoder-only model's records -> anchors, from its structure and the data's shape.

Both engine adapters (hf.py, vllm.py) call :func:`decoder_anchor_set`; what differs
between engines is read from the records themselves, so one rule serves every family:

- a norm called with a residual (vLLM's fused add + RMSNorm) has an output ``1``: the sum
  ``h + residual``, which is transformers' residual stream at that point; a layer whose
  MLP norm is fused returns ``(mlp_out, residual)`` and receives the previous layer's pair,
  so its residual stream is the sum of the two (nnterp#42, nnsight#630);
- a layer's hidden input is its first floating-point input (vLLM passes ``positions``
  first);
- linear layers return ``(out, bias)`` in vLLM (path ``0``) and a tensor in transformers;
- fused projections (``qkv_proj``, ``c_attn``, ``gate_up_proj``) are split by the
  config's head sizes, per tensor-parallel rank, then concatenated;
- ``logits_processor`` (vLLM) computes the last token of each request only and already
  applies final soft-capping; ``lm_head`` (transformers) does not, so its anchor applies
  the config's ``final_logit_softcapping``.

Engine-specific facts are arguments: ``embed_normalized`` says whether the embedding
module's output already includes Gemma's ``sqrt(hidden)`` normalizer (transformers: in
the module; vLLM: applied after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensortap.integrations.anchors.common import first_ref, model_config, steps_of
from tensortap.integrations.anchors.structure import (
    EMBED, FINAL_NORM, LM_HEAD, Dims, LayerParts, child, decoder_layers, interleaved_qkv,
    layer_parts, model_dims, parallel_residual,
)
from tensortap.integrations.anchors.vocab import AnchorExpr, AnchorSet, RecordIndex, Ref
from tensortap.store.reader import Run

GEMMA_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")
"""Families whose decoder multiplies the embedding by ``sqrt(hidden_size)``."""

OUT = ("0", "")
"""Output paths of a module: vLLM's ``(out, bias)`` item 0, else the lone tensor."""


@dataclass(frozen=True)
class Shards:
    """Per-rank widths of a fused QKV output, and which ranks hold distinct pieces."""

    q: int
    kv: int
    all_ranks: tuple[int, ...]
    kv_ranks: tuple[int, ...]


def shard_layout(dims: Dims, tp: int) -> Shards:
    """QKVParallelLinear widths on each of ``tp`` ranks.

    Query heads are split evenly. KV heads are split while tp <= num_kv_heads; beyond
    that each KV head is replicated on tp / num_kv_heads consecutive ranks, so only every
    (tp / num_kv_heads)-th rank holds a distinct K and V.
    """
    replicas = tp // dims.kv_heads if tp > dims.kv_heads else 1
    ranks = tuple(range(tp))
    return Shards(dims.heads * dims.head_dim // tp, max(dims.kv_heads // tp, 1) * dims.head_dim,
                  ranks, ranks[::replicas])


def _dtype_round(x: float, dtype: str | None) -> float:
    """``x`` as the engine holds it: a constant stored in the run's dtype."""
    dt = getattr(torch, dtype or "float32", torch.float32)
    return float(torch.tensor(x, dtype=dt if isinstance(dt, torch.dtype) else torch.float32))


class _Step:
    """Look-ups of one step's records."""

    def __init__(self, index: RecordIndex, step: int) -> None:
        self.index, self.step = index, step

    def ref(self, module: str | None, role: str, paths: tuple[str, ...]) -> Ref | None:
        return first_ref(self.index, self.step, module, role, paths) if module else None

    def float_ref(self, module: str | None, role: str, paths: tuple[str, ...]) -> Ref | None:
        """The first of ``paths`` holding a floating-point tensor."""
        for p in paths if module else ():
            rec = self.index.get(self.step, Ref(module, role, p))
            if rec is not None and rec.has_data and (rec.dtype or "").startswith(("float", "bfloat")):
                return Ref(module, role, p)
        return None

    def shape(self, ref: Ref) -> tuple[int, ...] | None:
        rec = self.index.get(self.step, ref)
        return tuple(rec.shape) if rec is not None and rec.shape is not None else None


def decoder_anchor_set(run: Run, index: RecordIndex, engine: str,
                       embed_normalized: bool = True) -> AnchorSet:
    """Anchors of a decoder-only model run (see the module docstring for the rules)."""
    cfg = model_config(run)
    dims = model_dims(cfg)
    mods = {k[1] for k in index.by_key}
    base, layers = decoder_layers(mods)
    parts = {i: layer_parts(mods, name) for i, name in layers.items()}
    tp = int((run.info.get("parallel") or {}).get("tp_size") or 1)
    out = AnchorSet(engine=engine, parallel_residual=parallel_residual(cfg),
                    family=str(cfg.get("model_type") or ""))
    if dims is None and any(p.qkv for p in parts.values()):
        out.unavailable["layers.*.q/k/v"] = "model config (head counts) not recorded in run.json"
    heads_first: dict[str, bool] = {}
    embed_mod, norm_mod = child(mods, base, EMBED), child(mods, base, FINAL_NORM)
    head_mod = child(mods, "", LM_HEAD) or child(mods, base, LM_HEAD)
    for step in steps_of(index):
        at = _Step(index, step)

        def put(anchor: str, expr: AnchorExpr | None) -> None:
            if expr is not None:
                out.points[(step, anchor)] = expr

        def one(module: str | None, role: str = "output", paths: tuple[str, ...] = OUT,
                **kw) -> AnchorExpr | None:
            ref = at.ref(module, role, paths)
            return AnchorExpr((ref,), **kw) if ref else None

        emb = one(embed_mod)
        if emb is not None and not embed_normalized and out.family in GEMMA_TYPES and dims:
            rec = index.get(step, emb.terms[0])
            emb = AnchorExpr(emb.terms, scale=_dtype_round(dims.hidden ** 0.5, rec.dtype if rec else None))
        put("embed", emb)
        for i, p in parts.items():
            _layer(at, put, one, f"layers.{i}.", p, dims, tp, cfg, out.parallel_residual, heads_first)
        put("final_norm", one(norm_mod))
        put("logits", _logits(at, mods, head_mod, cfg))
    return out


def _layer(at: _Step, put, one, a: str, p: LayerParts, dims: Dims | None, tp: int, cfg: dict,
           parallel: bool, heads_first: dict[str, bool]) -> None:
    L = p.layer
    fused = p.mlp_norm is not None and at.ref(p.mlp_norm, "output", ("1",)) is not None
    h = at.float_ref(L, "input", ("hidden_states", "0", "1"))
    r = at.float_ref(L, "input", ("residual", "2")) if fused else None
    if h is not None:
        put(a + "resid_pre", AnchorExpr((h, r) if r else (h,)))
    put(a + "attn_in", one(p.attn_norm))
    for x in "qkv":
        put(a + x, one(getattr(p, x)))
    if p.qkv and dims is not None:
        qkv = at.ref(p.qkv, "output", OUT)
        if qkv is not None:
            for x, expr in _split_qkv(qkv, dims, tp, cfg, p.qkv).items():
                put(a + x, expr)
    for x in ("q_norm", "k_norm"):
        mod = getattr(p, x)
        ref = at.ref(mod, "output", ("", "0"))
        if ref is not None:
            put(a + x, AnchorExpr((ref,), heads_first=_heads_first(at, ref, dims, heads_first)))
    put(a + "o", one(p.o))
    put(a + "attn_out", one(p.attn, paths=("0", "")))
    put(a + "attn_post_norm", one(p.attn_post_norm))
    if not parallel and p.mlp_norm:
        mid = at.ref(p.mlp_norm, "output", ("1",)) if fused else \
            at.float_ref(p.mlp_norm, "input", ("0", "hidden_states"))
        put(a + "resid_mid", AnchorExpr((mid,)) if mid else None)
    put(a + "mlp_in", one(p.mlp_norm))
    put(a + "router", one(p.router))
    put(a + "gate", one(p.gate))
    put(a + "up", one(p.up))
    if p.gate_up:
        gu = at.ref(p.gate_up, "output", OUT)
        shape = at.shape(gu) if gu else None
        if shape:
            half = shape[-1] // 2
            ranks = tuple(range(tp))
            put(a + "gate", AnchorExpr((gu,), 0, half, ranks=ranks))
            put(a + "up", AnchorExpr((gu,), half, 2 * half, ranks=ranks))
    put(a + "shared_expert", one(p.shared_down))
    put(a + "down", one(p.down))
    put(a + "mlp_out", one(p.mlp, paths=("", "0")))
    put(a + "mlp_post_norm", one(p.mlp_post_norm))
    o0, o1 = at.float_ref(L, "output", ("0",)), at.float_ref(L, "output", ("1",))
    if fused and o0 and o1 and at.shape(o0) == at.shape(o1):
        put(a + "resid_post", AnchorExpr((o0, o1)))
    else:
        put(a + "resid_post", one(L, paths=("", "0")))


def _split_qkv(ref: Ref, dims: Dims, tp: int, cfg: dict, module: str) -> dict[str, AnchorExpr]:
    if interleaved_qkv(cfg, module):
        hd, n = dims.head_dim, dims.heads
        cols = {x: tuple(h * 3 * hd + j * hd + c for h in range(n) for c in range(hd))
                for j, x in enumerate("qkv")}
        return {x: AnchorExpr((ref,), cols=c) for x, c in cols.items()}
    s = shard_layout(dims, tp)
    return {"q": AnchorExpr((ref,), 0, s.q, ranks=s.all_ranks),
            "k": AnchorExpr((ref,), s.q, s.q + s.kv, ranks=s.kv_ranks),
            "v": AnchorExpr((ref,), s.q + s.kv, s.q + 2 * s.kv, ranks=s.kv_ranks)}


def _heads_first(at: _Step, ref: Ref, dims: Dims | None, memo: dict[str, bool]) -> bool:
    """Whether a per-head norm's output is ``[batch, heads, seq, head_dim]``.

    transformers' Gemma 3 normalises after moving heads forward, Qwen3 before; vLLM's
    tensors are ``[tokens, heads, head_dim]``. A 4-d tensor is heads-first when dim 2 is
    the batch's sequence length and dim 1 is not; when both fit (heads == seq) the
    module's decision at another step stands.
    """
    shape = at.shape(ref)
    table = at.index.run.tokens(at.step) or {}
    batch = [int(x) for x in table.get("batch_shape") or []]
    if shape is None or len(shape) != 4 or len(batch) != 2:
        return False
    seq = batch[1]
    if shape[1] == seq and shape[2] != seq:
        memo[ref.module] = False
    elif shape[2] == seq and shape[1] != seq:
        memo[ref.module] = True
    return memo.get(ref.module, False)


def _logits(at: _Step, mods: set[str], head: str | None, cfg: dict) -> AnchorExpr | None:
    ref = at.ref("logits_processor" if "logits_processor" in mods else None, "output", ("",))
    if ref is not None:
        return AnchorExpr((ref,), rows="last")
    ref = at.ref(head, "output", ("", "0"))
    if ref is None:
        return None
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    cap = text.get("final_logit_softcapping")
    return AnchorExpr((ref,), softcap=float(cap) if cap else None)

