"""Local vs propagated error by replaying model B's modules on a reference run's inputs."""

from __future__ import annotations

import json

import pytest

import tensortap as tt
from tensortap.capture.config import build_config
from tensortap.integrations.hf import capture_generate, load_model
from tensortap.testing import tiny_llama
from conftest import run_cli

PLANTED = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("localize")
    bad = tiny_llama(base / "bad", perturb={PLANTED + ".weight": 0.01})
    ref = capture_generate(tiny_model_dir, build_config(out=str(base / "ref")),
                           prompts=["Paris is the capital of", "Hi"], max_new_tokens=2)["run"]
    return base, bad, ref


def test_culprit_is_exactly_the_perturbed_module(setup):
    base, bad, ref = setup
    model, _ = load_model(bad)
    rep = tt.localize(model, ref, out=base / "work")
    assert rep.culprit is not None
    assert (rep.culprit["module"], rep.culprit["step"], rep.culprit["call"]) == (PLANTED, 0, 0)
    rows = {(r.module, r.step, r.path): r for r in rep.rows if r.skipped is None}
    # Downstream modules carry the error in (propagated) but add none of their own (local).
    for name in ("model.norm", "lm_head"):
        r = rows[(name, 0, "")]
        assert r.local_status == "ok" and r.local == pytest.approx(0.0, abs=1e-6)
        assert r.propagated > 1e-3
    # Upstream modules have neither.
    up = rows[("model.layers.0.mlp.down_proj", 0, "")]
    assert up.local == 0.0 and up.propagated == 0.0
    # Steps after prefill need the KV cache: listed as skipped with the reason, never "clean".
    assert any("DynamicCache" in r.skipped for r in rep.rows if r.skipped)


def test_clean_model_has_no_culprit(setup, tiny_model_dir):
    base, _, ref = setup
    model, _ = load_model(tiny_model_dir)
    rep = tt.localize(model, ref, out=base / "clean")
    assert rep.culprit is None and rep.exit_code == 0
    assert all(r.local_status in ("ok", None) for r in rep.rows)


def test_cli_json_and_exit_codes(setup, tiny_model_dir, tmp_path):
    base, bad, ref = setup
    r = run_cli("localize", ref, str(bad), "--json", "--out", str(tmp_path / "w1"))
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["culprit"]["module"] == PLANTED and {"module", "step", "call"} <= set(doc["culprit"])
    assert {"module", "local", "propagated", "amplification"} <= set(doc["rows"][0])
    r = run_cli("localize", ref, str(tiny_model_dir), "--out", str(tmp_path / "w2"))
    assert r.returncode == 0 and "NO CULPRIT" in r.stdout
    r = run_cli("localize", str(tmp_path / "missing"), str(tiny_model_dir))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
