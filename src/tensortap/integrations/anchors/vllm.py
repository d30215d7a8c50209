"""vLLM (Llama-family model runner) records -> anchors.

vLLM's layouts differ from transformers' (vllm#9332, nnterp#42, nnsight#630):
- ``qkv_proj`` returns ``(out, bias)`` with ``out = [q | k | v]`` on the last dim, sized
  by the config's head counts (per tensor-parallel rank);
- ``gate_up_proj`` returns ``[gate | up]`` halves;
- a decoder layer returns ``(mlp_out, residual)`` and defers the residual add into the
  next layer's fused add+RMSNorm, so the HF-equivalent stream is their sum;
- ``input_layernorm(h, residual)`` returns ``(normed, h + residual)``;
- ``logits_processor`` computes logits for the last token of each request only;
- with tensor parallelism, column-parallel outputs (fused QKV, gate/up) are per-rank
  shards, split per rank before concatenating (replicated KV heads taken once); row-parallel
  outputs (o_proj, down_proj), embeddings and layer outputs are all-reduced, so rank 0's
  copy is the whole tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensortap.integrations.anchors.vocab import AnchorExpr, AnchorSet, RecordIndex, Ref
from tensortap.integrations.anchors.common import (
    decoder_layers, first_ref, model_base, model_config, steps_of,
)
from tensortap.store.reader import Run


@dataclass(frozen=True)
class Shards:
    """Per-rank widths of the column-parallel outputs, and which ranks hold distinct pieces."""

    q: int
    kv: int
    inter: int
    all_ranks: tuple[int, ...]
    kv_ranks: tuple[int, ...]


def shard_layout(cfg: dict, tp: int) -> Shards | None:
    """QKVParallelLinear / MergedColumnParallelLinear widths on each of ``tp`` ranks.

    Query heads and the MLP are split evenly. KV heads are split while tp <= num_kv_heads;
    beyond that each KV head is replicated on tp / num_kv_heads consecutive ranks, so
    only every (tp / num_kv_heads)-th rank holds a distinct K and V.
    """
    try:
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        inter = int(cfg["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return None
    replicas = tp // kv if tp > kv else 1
    ranks = tuple(range(tp))
    return Shards(heads * head_dim // tp, max(kv // tp, 1) * head_dim, inter // tp,
                  ranks, ranks[::replicas])


def _sizes(run: Run) -> Shards | None:
    par = run.info.get("parallel") or {}
    tp = int(par.get("tp_size") or 1)
    return shard_layout(model_config(run), tp)


def anchor_set(run: Run, index: RecordIndex) -> AnchorSet:
    out = AnchorSet(engine="vllm")
    layers = decoder_layers(index)
    base = model_base(next(iter(layers.values()))) if layers else "model"
    pre = f"{base}." if base else ""
    sizes = _sizes(run)
    if sizes is None:
        out.unavailable["layers.*.q/k/v, gate/up"] = "model config (head counts) not recorded in run.json"
    for step in steps_of(index):
        def put(anchor: str, expr: AnchorExpr | None) -> None:
            if expr is not None:
                out.points[(step, anchor)] = expr

        def one(module: str, role: str, paths: tuple[str, ...], **kw) -> AnchorExpr | None:
            ref = first_ref(index, step, module, role, paths)
            return AnchorExpr((ref,), **kw) if ref else None

        put("embed", one(f"{pre}embed_tokens", "output", ("",)))
        for i, L in layers.items():
            a = f"layers.{i}."
            h = first_ref(index, step, L, "input", ("1", "hidden_states"))
            r = first_ref(index, step, L, "input", ("2", "residual"))
            if h is not None:
                put(a + "resid_pre", AnchorExpr((h, r) if r else (h,)))
            put(a + "attn_in", one(f"{L}.input_layernorm", "output", ("0", "")))
            qkv = first_ref(index, step, f"{L}.self_attn.qkv_proj", "output", ("0", ""))
            if qkv and sizes:
                q, kv = sizes.q, sizes.kv
                put(a + "q", AnchorExpr((qkv,), 0, q, ranks=sizes.all_ranks))
                put(a + "k", AnchorExpr((qkv,), q, q + kv, ranks=sizes.kv_ranks))
                put(a + "v", AnchorExpr((qkv,), q + kv, q + 2 * kv, ranks=sizes.kv_ranks))
            put(a + "o", one(f"{L}.self_attn.o_proj", "output", ("0", "")))
            put(a + "attn_out", one(f"{L}.self_attn", "output", ("", "0")))
            put(a + "resid_mid", one(f"{L}.post_attention_layernorm", "output", ("1",)))
            put(a + "mlp_in", one(f"{L}.post_attention_layernorm", "output", ("0",)))
            gu = first_ref(index, step, f"{L}.mlp.gate_up_proj", "output", ("0", ""))
            if gu and sizes:
                inter = sizes.inter
                put(a + "gate", AnchorExpr((gu,), 0, inter, ranks=sizes.all_ranks))
                put(a + "up", AnchorExpr((gu,), inter, 2 * inter, ranks=sizes.all_ranks))
            put(a + "down", one(f"{L}.mlp.down_proj", "output", ("0", "")))
            put(a + "mlp_out", one(f"{L}.mlp", "output", ("",)))
            o0 = first_ref(index, step, L, "output", ("0",))
            o1 = first_ref(index, step, L, "output", ("1",))
            if o0 and o1:
                put(a + "resid_post", AnchorExpr((o0, o1)))
        put("final_norm", one(f"{pre}norm", "output", ("0", "")))
        put("logits", one("logits_processor", "output", ("",), rows="last"))
    return out
