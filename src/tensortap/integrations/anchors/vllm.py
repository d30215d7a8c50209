"""vLLM model-runner records -> anchors.

vLLM's layouts differ from transformers' (vllm#9332, nnterp#42, nnsight#630): fused
``qkv_proj``/``gate_up_proj`` returning ``(out, bias)``, the residual add deferred into
the next fused add+RMSNorm, ``logits_processor`` computing the last token of each request
with soft-capping applied, Gemma's embedding normalizer applied after the embedding
module. With tensor parallelism, column-parallel outputs (fused QKV, gate/up) are
per-rank shards, split per rank before concatenating (replicated KV heads taken once);
row-parallel outputs, embeddings and layer outputs are all-reduced, so rank 0's copy is
the whole tensor. The rules read the records, so the same code serves vLLM's native
models and its Transformers backend (``model_impl="transformers"``: transformers names,
``[1, tokens, hidden]`` activations). See decoder.py.
"""

from __future__ import annotations

from tensortap.integrations.anchors.decoder import Shards, decoder_anchor_set, shard_layout
from tensortap.integrations.anchors.vocab import AnchorSet, RecordIndex
from tensortap.store.reader import Run

__all__ = ["Shards", "anchor_set", "shard_layout"]


def anchor_set(run: Run, index: RecordIndex) -> AnchorSet:
    """Anchors of a vLLM run."""
    return decoder_anchor_set(run, index, "vllm", embed_normalized=False)
