"""The benchmark model: a transformers Llama built from a config with seeded random weights.

Issue 7 fixes the shape: 4 decoder layers, hidden 512, 256 tokens, fp32, CPU, one torch
thread. The rest follows Llama's proportions (head_dim 64, intermediate = hidden * 2.6875
like Llama-2's 11008/4096, vocab 32000), so the logits are a realistic share of the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Shape:
    layers: int = 4
    hidden: int = 512
    tokens: int = 256
    vocab: int = 32000
    heads: int = 8

    @property
    def intermediate(self) -> int:
        return int(self.hidden * 2.6875)


def build_model(shape: Shape = Shape(), seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, fp32) and one batch of ``shape.tokens`` random token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, max_position_embeddings=max(2048, shape.tokens),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, shape.vocab, (1, shape.tokens), generator=torch.Generator().manual_seed(seed))
    return model, ids


def forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """One prefill forward without a KV cache (what every variant times)."""
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits
