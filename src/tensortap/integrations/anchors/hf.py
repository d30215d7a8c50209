"""transformers (Llama, Qwen2/3, Mistral-style) records -> anchors.

Names are found from the captured modules' structure (``…layers.<i>`` with
``input_layernorm``, an attention child, ``post_attention_layernorm`` and an MLP child),
not from a per-model list.
"""

from __future__ import annotations

from tensortap.integrations.anchors.vocab import AnchorExpr, AnchorSet, RecordIndex, Ref
from tensortap.integrations.anchors.common import decoder_layers, first_ref, model_base, steps_of
from tensortap.store.reader import Run

_ATTN = ("self_attn", "attention", "attn")
_MLP = ("mlp", "feed_forward")


def _child(index: RecordIndex, parent: str, names: tuple[str, ...]) -> str | None:
    mods = {k[1] for k in index.by_key}
    for n in names:
        if f"{parent}.{n}" in mods:
            return f"{parent}.{n}"
    return None


def anchor_set(run: Run, index: RecordIndex) -> AnchorSet:
    out = AnchorSet(engine="hf")
    layers = decoder_layers(index)
    base = model_base(next(iter(layers.values()))) if layers else "model"
    pre = f"{base}." if base else ""
    for step in steps_of(index):
        def put(anchor: str, ref: Ref | None, **kw) -> None:
            if ref is not None:
                out.points[(step, anchor)] = AnchorExpr((ref,), **kw)

        put("embed", first_ref(index, step, f"{pre}embed_tokens", "output", ("",)))
        for i, L in layers.items():
            a = f"layers.{i}."
            attn = _child(index, L, _ATTN)
            mlp = _child(index, L, _MLP)
            put(a + "resid_pre", first_ref(index, step, L, "input", ("0", "hidden_states")))
            put(a + "attn_in", first_ref(index, step, f"{L}.input_layernorm", "output", ("",)))
            if attn:
                for x in "qkv":
                    put(a + x, first_ref(index, step, f"{attn}.{x}_proj", "output", ("",)))
                put(a + "o", first_ref(index, step, f"{attn}.o_proj", "output", ("",)))
                put(a + "attn_out", first_ref(index, step, attn, "output", ("0", "")))
            put(a + "resid_mid", first_ref(index, step, f"{L}.post_attention_layernorm", "input",
                                           ("0", "hidden_states")))
            put(a + "mlp_in", first_ref(index, step, f"{L}.post_attention_layernorm", "output", ("",)))
            if mlp:
                put(a + "gate", first_ref(index, step, f"{mlp}.gate_proj", "output", ("",)))
                put(a + "up", first_ref(index, step, f"{mlp}.up_proj", "output", ("",)))
                put(a + "down", first_ref(index, step, f"{mlp}.down_proj", "output", ("",)))
                put(a + "mlp_out", first_ref(index, step, mlp, "output", ("",)))
            put(a + "resid_post", first_ref(index, step, L, "output", ("", "0")))
        put("final_norm", first_ref(index, step, f"{pre}norm", "output", ("",)))
        put("logits", first_ref(index, step, "lm_head", "output", ("",)))
    return out
