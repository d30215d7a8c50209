"""transformers (and plain PyTorch) records -> anchors.

The layers, their parts and the fused projections are found from the captured module
structure (integrations/anchors/structure.py, decoder.py), not from a per-model list.
transformers' embedding modules include Gemma's normalizer (``*ScaledWordEmbedding``) and
``lm_head`` returns logits before final soft-capping.
"""

from __future__ import annotations

from tensortap.integrations.anchors.decoder import decoder_anchor_set
from tensortap.integrations.anchors.vocab import AnchorSet, RecordIndex
from tensortap.store.reader import Run


def anchor_set(run: Run, index: RecordIndex) -> AnchorSet:
    """Anchors of a transformers run."""
    return decoder_anchor_set(run, index, "hf", embed_normalized=True)
