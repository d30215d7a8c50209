"""transformers vs a real vLLM engine on the same weights, anchor by anchor, token by token."""

from __future__ import annotations

import json

import pytest

import tensortap as tt
from tensortap.compare.mapping import resolve_mapping
from tensortap.testing import tiny_llama
from conftest import capture_cli, run_cli

pytestmark = pytest.mark.vllm

PROMPTS = ["Paris is the capital of France and", "Hi"]      # different lengths in one batch
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def _capture(engine: str, model, out, *extra: str) -> str:
    return capture_cli(engine, model, out, PROMPTS, 3, *extra, env=VLLM_ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("xengine")
    bad = tiny_llama(base / "bad", perturb={"model.layers.1.mlp.down_proj.weight": 0.01})
    return {
        "hf": _capture("hf", tiny_model_dir, base / "hf"),
        "vllm": _capture("vllm", tiny_model_dir, base / "vllm", "--dtype", "float32"),
        "vllm_bad": _capture("vllm", bad, base / "vllm-bad", "--dtype", "float32"),
        "vllm_bf16": _capture("vllm", tiny_model_dir, base / "vllm-bf16", "--dtype", "bfloat16"),
    }


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory, tiny_model_dir):
    # One core per rank: the CPU engine refuses TP without an explicit binding.
    VLLM_ENV["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    try:
        return _capture("vllm", tiny_model_dir, tmp_path_factory.mktemp("tp2") / "vllm-tp2",
                        "--dtype", "float32", "--tensor-parallel-size", "2")
    finally:
        VLLM_ENV.pop("VLLM_CPU_OMP_THREADS_BIND")


def test_same_weights_agree_at_every_anchor(runs):
    rep = tt.diff(runs["hf"], runs["vllm"])
    assert rep.verdict == "agree", rep.to_json()[:2000]
    anchors = {r.module for r in rep.rows}
    for i in (0, 1):
        for sub in ("resid_pre", "attn_in", "q", "k", "v", "o", "attn_out", "resid_mid", "mlp_in",
                    "gate", "up", "down", "mlp_out", "resid_post"):
            assert f"layers.{i}.{sub}" in anchors
    assert {"embed", "final_norm", "logits"} <= anchors
    assert {r.step for r in rep.rows} == {0, 1, 2}            # prefill and two decode steps
    assert max(r.rel_l2 for r in rep.rows) < 1e-5             # fp32 engine noise, ~5e-7 measured
    prefill = [r for r in rep.rows if r.step == 0 and r.module == "layers.1.resid_post"][0]
    n_tokens = sum(len(tt_ids) for tt_ids in _prompt_ids(runs["hf"]))
    assert prefill.shape_a[0] == n_tokens                      # padding rows left out, every real token kept
    logits = [r for r in rep.rows if r.module == "logits"]
    assert all(r.top1_agree == 1.0 for r in logits)


def _prompt_ids(run_path):
    t0 = tt.open(run_path).tokens(0)
    out: dict[int, list[int]] = {}
    for req, tok in zip(t0["request"], t0["token_ids"]):
        if req >= 0:
            out.setdefault(req, []).append(tok)
    return list(out.values())


def test_identities_hold_in_each_engine(runs):
    mapping = resolve_mapping("auto", tt.open(runs["hf"]), tt.open(runs["vllm"]))
    checks = mapping.identity_checks()
    engines = {c.engine for c in checks}
    assert engines == {"hf", "vllm"}
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_planted_bug_named_in_both_engines_terms(runs):
    r = run_cli("diff", runs["hf"], runs["vllm_bad"], "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    fd = doc["first_divergence"]
    assert (fd["module"], fd["step"], fd["role"]) == ("layers.1.down", 0, "output")
    assert "model.layers.1.mlp.down_proj" in fd["message"] and "vllm:" in fd["message"]
    earlier = doc["rows"][: fd["row"]]
    assert earlier and all(row["status"] == "ok" for row in earlier)
    assert fd.get("origin") == "introduced"                  # gate/up (its inputs) agree


def test_bf16_engine_against_fp32_reference_uses_bf16_tolerance(runs):
    rep = tt.diff(runs["hf"], runs["vllm_bf16"])
    assert rep.verdict == "agree"
    assert all(r.dtype_b == "bfloat16" for r in rep.rows)
    assert max(r.rel_l2 for r in rep.rows) > 1e-4             # really bf16 rounding, not fp32
    strict = tt.diff(runs["hf"], runs["vllm_bf16"], atol=1e-6, rtol=1e-5)
    assert strict.verdict == "diverged"


def test_tensor_parallel_2_unshards_to_match_hf(runs, tp2_run):
    run = tt.open(tp2_run)
    assert run.ranks == [0, 1] and run.info["parallel"]["tp_size"] == 2
    qkv = run.records(module=r"layers\.0\.self_attn\.qkv_proj$", role="output", step=0, rank=1)[0]
    assert qkv.shape[-1] == 64 + 64 + 64          # per rank: half the query heads, the one KV head replicated
    rep = tt.diff(runs["hf"], tp2_run)
    assert rep.verdict == "agree", rep.to_json()[:2000]
    by = {(r.step, r.module): r for r in rep.rows}
    assert by[(0, "layers.0.q")].shape_b[-1] == 128 and by[(0, "layers.0.k")].shape_b[-1] == 64
    assert by[(0, "layers.1.gate")].shape_b[-1] == 256
    assert "concat over ranks [0, 1]" in (by[(0, "layers.0.q")].raw_b or "")
    assert max(r.rel_l2 for r in rep.rows) < 1e-5
