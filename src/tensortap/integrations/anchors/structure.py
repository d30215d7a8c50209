"""Where each part of a decoder layer lives, found from the captured module names.

transformers and vLLM name their modules after the checkpoint's weights (vLLM must, to
load them), so one table of child names covers both engines and every family here:
Llama/Qwen/Mistral (``self_attn``, ``mlp``), Gemma (four norms), Phi-3 (fused
``qkv_proj``, ``gate_up_proj``), GPT-2 (``h.<i>``, ``attn.c_attn``, ``mlp.c_fc``),
GPT-NeoX (``attention.query_key_value``, ``dense_h_to_4h``), and mixture-of-experts
blocks (``gate`` router, ``experts``, ``shared_expert``). A family whose names are not in
the table gets no anchors for those parts, never wrong ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

EMBED = ("embed_tokens", "wte", "embed_in", "word_embeddings", "tok_embeddings")
FINAL_NORM = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
LM_HEAD = ("lm_head", "embed_out", "output_layer")
ATTN = ("self_attn", "attention", "attn", "self_attention")
ATTN_NORM = ("input_layernorm", "ln_1", "attention_norm")
MLP_NORM = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "ffn_norm")
"""The norm in front of the MLP. Gemma's ``pre_feedforward_layernorm`` comes first: there
``post_attention_layernorm`` normalises the attention output instead (a sandwich norm)."""
MLP = ("mlp", "feed_forward", "block_sparse_moe", "moe", "ffn")
Q, K, V = ("q_proj",), ("k_proj",), ("v_proj",)
QKV = ("qkv_proj", "c_attn", "query_key_value", "Wqkv")
O = ("o_proj", "c_proj", "dense", "out_proj")
GATE = ("gate_proj", "w1")
UP = ("up_proj", "w3", "c_fc", "dense_h_to_4h", "fc1")
DOWN = ("down_proj", "w2", "c_proj", "dense_4h_to_h", "fc2")
GATE_UP = ("gate_up_proj",)

_LAYER = re.compile(r"^(?P<base>.*?)\.?(?:layers|h|layer|blocks)\.(?P<idx>\d+)$")


@dataclass
class LayerParts:
    """Qualified module names of one decoder layer's parts (None: not captured / absent)."""

    layer: str
    attn_norm: str | None = None
    attn: str | None = None
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    q_norm: str | None = None
    k_norm: str | None = None
    o: str | None = None
    attn_post_norm: str | None = None
    mlp_norm: str | None = None
    mlp: str | None = None
    gate: str | None = None
    up: str | None = None
    gate_up: str | None = None
    down: str | None = None
    router: str | None = None
    shared_down: str | None = None
    mlp_post_norm: str | None = None


def child(mods: set[str], parent: str | None, names: tuple[str, ...]) -> str | None:
    """The first ``parent.<name>`` in ``mods``."""
    if parent is None:
        return None
    pre = f"{parent}." if parent else ""
    return next((pre + n for n in names if pre + n in mods), None)


def decoder_layers(mods: set[str]) -> tuple[str, dict[int, str]]:
    """``(base, {index: layer module})`` of the largest stack of numbered layers.

    A multimodal model has several stacks (vision tower, decoder); the decoder is the one
    beside an embedding, else the longest.
    """
    stacks: dict[str, dict[int, str]] = {}
    for m in mods:
        mm = _LAYER.match(m)
        if mm:
            stacks.setdefault(mm.group("base"), {})[int(mm.group("idx"))] = m
    if not stacks:
        return "model", {}

    def rank(base: str) -> tuple[int, int]:
        return (child(mods, base, EMBED) is not None, len(stacks[base]))

    base = max(stacks, key=rank)
    return base, dict(sorted(stacks[base].items()))


def layer_parts(mods: set[str], layer: str) -> LayerParts:
    """Find the parts of ``layer`` among the captured module names ``mods``."""
    p = LayerParts(layer)
    p.attn_norm = child(mods, layer, ATTN_NORM)
    p.attn = child(mods, layer, ATTN)
    if p.attn:
        p.q, p.k, p.v = (child(mods, p.attn, n) for n in (Q, K, V))
        p.qkv = child(mods, p.attn, QKV)
        p.q_norm = child(mods, p.attn, ("q_norm", "q_layernorm"))
        p.k_norm = child(mods, p.attn, ("k_norm", "k_layernorm"))
        p.o = child(mods, p.attn, O)
    p.mlp_norm = child(mods, layer, MLP_NORM)
    if p.mlp_norm and p.mlp_norm.endswith("pre_feedforward_layernorm"):
        p.attn_post_norm = child(mods, layer, ("post_attention_layernorm",))
        p.mlp_post_norm = child(mods, layer, ("post_feedforward_layernorm",))
    p.mlp = child(mods, layer, MLP)
    if p.mlp:
        if child(mods, p.mlp, ("experts",)) is not None:
            p.router = child(mods, p.mlp, ("gate", "router"))
            shared = child(mods, p.mlp, ("shared_expert", "shared_experts"))
            p.shared_down = child(mods, shared, DOWN)
        else:
            p.gate, p.up, p.down = (child(mods, p.mlp, n) for n in (GATE, UP, DOWN))
            p.gate_up = child(mods, p.mlp, GATE_UP)
    return p


@dataclass(frozen=True)
class Dims:
    """Attention sizes of a model config, whatever the family calls them."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int


def model_dims(cfg: dict[str, Any]) -> Dims | None:
    """Hidden size and head counts from an HF config (GPT-2's ``n_embd``/``n_head`` too;
    a multimodal config's ``text_config``)."""
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = cfg["text_config"]
    try:
        hidden = int(cfg.get("hidden_size") or cfg["n_embd"])
        heads = int(cfg.get("num_attention_heads") or cfg["n_head"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError):
        return None
    return Dims(hidden, heads, kv, head_dim)


PARALLEL_RESIDUAL_TYPES = ("gptj", "phi", "cohere", "cohere2")
"""Families whose every layer adds attention and MLP to the same input (GPT-NeoX decides
per config: ``use_parallel_residual``)."""


def parallel_residual(cfg: dict[str, Any]) -> bool:
    """Whether the config's layers use a parallel residual (no ``resid_mid``)."""
    if "use_parallel_residual" in cfg:
        return bool(cfg["use_parallel_residual"])
    return cfg.get("model_type") in PARALLEL_RESIDUAL_TYPES


def interleaved_qkv(cfg: dict[str, Any], module: str) -> bool:
    """GPT-NeoX's fused ``query_key_value`` holds ``[q_h | k_h | v_h]`` per head, not
    ``[q | k | v]`` (transformers' layout; vLLM runs it through its Transformers backend)."""
    return module.endswith("query_key_value") and cfg.get("model_type") == "gpt_neox"
