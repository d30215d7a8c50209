"""Every anchored family on both engines: tiny random configs built on the fly, captured by
transformers and by the real vLLM CPU engine, diffed anchor by anchor (docs/cross-engine.md).

For each family the checked identities hold in both runs, a clean fp32 pair agrees with
the family's own sublayers anchored, and (for the families marked) a planted 1% weight
bug is named at the sublayer it was planted in.
"""

from __future__ import annotations

import pytest

import tensortap as tt
from tensortap.compare.mapping import resolve_mapping
from tensortap.testing.families import tiny_model
from conftest import capture_cli

pytestmark = pytest.mark.vllm

PROMPTS = ["Paris is the capital of France and", "Hi"]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}

# family -> (anchors its layers must have beyond the common ones, planted bug or None)
FAMILIES = {
    "qwen2": ((), None),
    "qwen3": (("q_norm", "k_norm"), None),
    "mistral": ((), None),
    "gemma2": (("attn_post_norm", "mlp_post_norm"), ("model.layers.1.mlp.down_proj.weight", "layers.1.down")),
    "gemma3": (("q_norm", "k_norm", "attn_post_norm", "mlp_post_norm"), None),
    "phi3": (("gate", "up"), None),
    "gpt2": (("up",), ("transformer.h.1.mlp.c_proj.weight", "layers.1.down")),
    "gpt_neox": (("up",), None),
    "mixtral": (("router",), None),
    "qwen2_moe": (("router", "shared_expert"), None),
    "qwen3_moe": (("router", "q_norm", "k_norm"), ("model.layers.1.self_attn.o_proj.weight", "layers.1.o")),
}
COMMON = ("resid_pre", "attn_in", "q", "k", "v", "o", "attn_out", "mlp_in", "mlp_out", "resid_post")


def _capture(engine: str, model, out, *extra: str) -> str:
    return capture_cli(engine, model, out, PROMPTS, 2, *extra, env=ENV)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_agrees_across_engines_and_names_a_planted_bug(family, tmp_path):
    extra_anchors, bug = FAMILIES[family]
    model = tiny_model(tmp_path / "model", family)
    hf = _capture("hf", model, tmp_path / "hf")
    vl = _capture("vllm", model, tmp_path / "vllm", "--dtype", "float32")
    mapping = resolve_mapping("auto", tt.open(hf), tt.open(vl))
    checks = mapping.identity_checks()
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    rep = tt.diff(hf, vl)
    assert rep.verdict == "agree", rep.to_json()[:3000]
    anchors = {r.module for r in rep.rows}
    for i in (0, 1):
        for sub in COMMON + extra_anchors:
            assert f"layers.{i}.{sub}" in anchors, (family, sub)
        # A parallel-residual layer has no point between attention and MLP.
        assert (f"layers.{i}.resid_mid" in anchors) == (family != "gpt_neox")
    assert {"embed", "final_norm", "logits"} <= anchors
    if bug is None:
        return
    param, where = bug
    bad = tiny_model(tmp_path / "bad", family, perturb={param: 0.01})
    vl_bad = _capture("vllm", bad, tmp_path / "vllm-bad", "--dtype", "float32")
    rep = tt.diff(hf, vl_bad)
    assert rep.verdict == "diverged"
    assert rep.first_divergence.module == where and rep.first_divergence.step == 0, rep.first_divergence


def test_vllm_transformers_backend_is_anchored(tmp_path, tiny_model_dir):
    """vLLM's Transformers backend: transformers names inside vLLM, [1, tokens, hidden]."""
    hf = _capture("hf", tiny_model_dir, tmp_path / "hf")
    vl = _capture("vllm", tiny_model_dir, tmp_path / "vllm", "--dtype", "float32", "--model-impl", "transformers")
    shapes = {tuple(r.shape) for r in tt.open(vl).records() if r.module.endswith("layers.0") and r.shape}
    assert any(len(s) == 3 and s[0] == 1 for s in shapes), shapes
    rep = tt.diff(hf, vl)
    assert rep.verdict == "agree", rep.to_json()[:3000]
    assert {f"layers.1.{x}" for x in COMMON} <= {r.module for r in rep.rows}
