"""A tiny Llama model folder with seeded random weights and a tokenizer trained on the fly.

Both transformers and vLLM load the folder. head_dim is 64 because vLLM's CPU attention
rejects 16. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Tensors flow through layers of attention and feed forward networks.",
    "A debugging tool captures intermediate activations to find divergence.",
    "Once upon a time there was a small model that learned to count: one two three four five.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols + - * / = ( ) [ ] { } , . ; :",
]


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def tiny_llama(
    path: str | Path,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 2,
    kv_heads: int = 1,
    seed: int = 0,
    vocab_size: int = 512,
    intermediate: int | None = None,
    perturb: dict[str, float] | None = None,
) -> Path:
    """Write a tiny Llama model folder (config, safetensors weights, tokenizer) to ``path``.

    ``perturb`` maps parameter names to a value added to that parameter (e.g.
    ``{"model.layers.1.mlp.down_proj.weight": 0.05}``): a planted bug for diff demos.
    Returns the folder path.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    fast.padding_side = "left"
    fast.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Random init at std 0.02 gives near-uniform logits; a larger std makes greedy
    # decoding depend on the weights, so planted bugs change generated text.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[1] ** 0.5))
        for name, delta in (perturb or {}).items():
            params = dict(model.named_parameters())
            if name not in params:
                raise KeyError(f"no parameter {name!r} to perturb")
            params[name].add_(delta)
    model.save_pretrained(path, safe_serialization=True)
    return path
