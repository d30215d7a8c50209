"""Tiny model folders of the architecture families tensortap anchors, built on the fly.

Each family is a transformers config class with small sizes (2 layers, hidden 128,
head_dim 64: vLLM's CPU attention refuses smaller heads) and the family's own features
kept on (q/k norms, soft-capping, fused projections, parallel residual, experts). Weights
are seeded random; nothing is downloaded. Both transformers and vLLM load the folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_COMMON: dict[str, Any] = dict(
    vocab_size=512, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    tie_word_embeddings=False, torch_dtype="float32",
)
_DECODER: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
)
_MOE: dict[str, Any] = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128)

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", _DECODER),
    "qwen2": ("Qwen2Config", {**_DECODER}),
    "qwen3": ("Qwen3Config", {**_DECODER}),
    "mistral": ("MistralConfig", {**_DECODER, "sliding_window": None}),
    "gemma2": ("Gemma2Config", {**_DECODER, "query_pre_attn_scalar": 64, "sliding_window": 256,
                                 "final_logit_softcapping": 30.0, "attn_logit_softcapping": None,
                                 "tie_word_embeddings": True}),
    "gemma3": ("Gemma3TextConfig", {**_DECODER, "query_pre_attn_scalar": 64, "sliding_window": 256,
                                     "final_logit_softcapping": None,
                                     "tie_word_embeddings": True}),
    "phi3": ("Phi3Config", {**_DECODER, "num_key_value_heads": 2}),
    "gpt2": ("GPT2Config", dict(n_embd=128, n_layer=2, n_head=2, n_positions=512, n_inner=256,
                                activation_function="gelu_new")),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=2, use_parallel_residual=True,
                                       rotary_pct=1.0)),
    "mixtral": ("MixtralConfig", {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2,
                                  "sliding_window": None}),
    "qwen2_moe": ("Qwen2MoeConfig", {**_DECODER, **_MOE, "shared_expert_intermediate_size": 128,
                                     "decoder_sparse_step": 1, "mlp_only_layers": []}),
    "qwen3_moe": ("Qwen3MoeConfig", {**_DECODER, **_MOE, "decoder_sparse_step": 1,
                                     "mlp_only_layers": [], "norm_topk_prob": True}),
}
"""family -> (transformers config class, its tiny sizes). Gemma ties its embeddings (vLLM's
Gemma loaders expect no ``lm_head`` weight)."""


def tiny_model(
    path: str | Path,
    family: str = "llama",
    seed: int = 0,
    perturb: dict[str, float] | None = None,
    **overrides: Any,
) -> Path:
    """Write a tiny model folder of ``family`` (a key of :data:`FAMILIES`) to ``path``.

    ``perturb`` maps parameter names (transformers' names) to a value added to that
    parameter: a planted bug. ``overrides`` replace config fields. Returns the folder.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tensortap.testing.tiny import _train_tokenizer

    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    cls_name, sizes = FAMILIES[family]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(_COMMON["vocab_size"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    fast.padding_side = "left"
    fast.save_pretrained(path)
    config = getattr(transformers, cls_name)(**{**_COMMON, **sizes, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random init at std 0.02 gives near-uniform logits; unit-variance outputs per layer
    # make greedy decoding depend on the weights, so planted bugs change generated text.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p.shape[0] if type(_owner(model, name)).__name__ == "Conv1D" else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / fan_in ** 0.5))
        params = dict(model.named_parameters())
        for name, delta in (perturb or {}).items():
            if name not in params:
                raise KeyError(f"no parameter {name!r} to perturb")
            params[name].add_(delta)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _owner(model: Any, param_name: str) -> Any:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model
