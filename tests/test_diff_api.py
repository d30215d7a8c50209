"""tt.diff on real captures of a tiny Llama: agreement, the planted bug, amplification, JSON."""

from __future__ import annotations

import json
import math
import shutil

import pytest

import tensortap as tt
from tensortap.errors import TensortapError
from diff_helpers import PLANTED_MODULE, runs  # noqa: F401  (fixture)

ROW_KEYS = {"index", "rank", "step", "module", "call", "role", "path", "status", "kind", "estimated",
            "dtype_a", "dtype_b", "shape_a", "shape_b", "max_abs", "mean_abs", "rel_l2", "cosine", "rel_diff",
            "sqnr_db", "allclose_fail_frac", "nan_mismatch", "inf_mismatch", "worst_index", "atol", "rtol",
            "limit", "ratio", "tripped", "amplification", "origin", "input_rel_l2", "top1_agree", "kl"}


def test_identical_runs_agree(runs):
    rep = tt.diff(runs.a, runs.a_rerun)
    assert rep.verdict == "agree" and rep.exit_code == 0
    assert rep.first_divergence is None and rep.unmatched == []
    assert len(rep.rows) == len(tt.open(runs.a).records())
    assert all(r.status == "ok" for r in rep.rows)
    assert all(r.rel_l2 == 0 for r in rep.rows if r.kind == "tensor")
    assert "identical" in rep.summary_line
    # Rows follow run A's execution order.
    assert [r.seq_a for r in rep.rows] == sorted(r.seq_a for r in rep.rows)


def test_planted_perturbation_is_the_first_divergence(runs):
    rep = tt.diff(runs.a, runs.bug)
    assert rep.verdict == "diverged" and rep.exit_code == 1
    fd = rep.first_divergence
    assert (fd.module, fd.step, fd.call, fd.role, fd.path) == (PLANTED_MODULE, 0, 0, "output", "")
    assert fd.metric == "token_rel_l2" and fd.value > fd.limit > 0
    assert fd.origin == "introduced"
    assert PLANTED_MODULE in rep.summary_line
    # Everything before it in execution order agrees, its own input included.
    assert all(r.status == "ok" for r in rep.rows[: fd.row])
    row = rep.rows[fd.row]
    assert row.input_rel_l2 == 0 and row.amplification == math.inf
    assert row.worst_token is not None and row.worst_index is not None
    # Later steps do not introduce it again: the same module's error at step 0 is what
    # its state (and its weight) already carried.
    introduced = {(r.step, r.module) for r in rep.rows if r.status == "diverged"}
    assert introduced == {(0, PLANTED_MODULE)}
    later = [r for r in rep.rows if r.module == PLANTED_MODULE and r.role == "output" and r.step > 0]
    assert later and all(r.status == "ok" and r.carried_from == "earlier steps" for r in later)


def test_later_modules_show_amplification_not_introduction(runs):
    rep = tt.diff(runs.a, runs.bug)
    by = {(r.step, r.module, r.role, r.path): r for r in rep.rows}
    for module in ("model.norm", "lm_head"):
        r = by[(0, module, "output", "")]
        # Far beyond fp32 noise, but no more than its inputs carry: carried, not a divergence.
        assert r.token_rel_l2 > 1e-3 and r.status == "ok" and r.origin is None
        assert r.carried > 0 and r.carried_from == "inputs" and r.token_rel_l2 <= r.limit
        assert r.input_rel_l2 > 0 and 0 < r.amplification < 10
    # Containers of the bug carry it from their children: only the module itself introduces it.
    fd = rep.first_divergence
    for module in ("", "model", "model.layers.1", "model.layers.1.mlp"):
        outs = [r for r in rep.rows if r.step == 0 and r.module == module and r.role == "output"
                and r.token_rel_l2]
        assert outs and all(r.status == "ok" and r.carried_from == "children" for r in outs), module
    assert {r.module for r in rep.rows if r.origin == "introduced"} == {PLANTED_MODULE}
    logits = by[(0, "lm_head", "output", "")]
    assert logits.is_logits and logits.top1_agree is not None and logits.kl is not None and logits.kl >= 0
    assert fd.row < logits.index


def test_json_document_schema(runs):
    rep = tt.diff(runs.a, runs.bug)
    doc = json.loads(rep.to_json())
    assert doc == rep.to_dict()
    assert doc["schema"] == "tensortap.diff" and doc["schema_version"] == 1
    assert doc["verdict"] == "diverged" and doc["exit_code"] == 1
    fd = doc["first_divergence"]
    assert {"module", "step", "call", "role", "path", "metric", "value", "limit"} <= set(fd)
    assert fd["module"] == PLANTED_MODULE and fd["metric"] == "token_rel_l2"
    assert isinstance(doc["rows"], list) and isinstance(doc["unmatched"], list)
    assert len(doc["rows"]) == doc["counts"]["pairs"]
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["status"] in ("ok", "diverged", "mismatch", "error")
    # Strict JSON: identical tensors have infinite SQNR, written as null.
    same = json.loads(tt.diff(runs.a, runs.a_rerun).to_json())
    assert same["first_divergence"] is None
    assert all(r["sqnr_db"] is None for r in same["rows"] if r["kind"] == "tensor")


def test_unmatched_records_are_listed_and_strict_fails(runs):
    rep = tt.diff(runs.a, runs.a_steps01)
    assert rep.verdict == "agree"
    only_a = [u for u in rep.unmatched if u.side == "a"]
    assert only_a and all(u.step == 2 for u in only_a)
    assert all("no step 2" in u.reason for u in only_a)
    assert len(only_a) + len(rep.rows) == len(tt.open(runs.a).records())
    assert "only in one run" in rep.summary_line
    strict = tt.diff(runs.a, runs.a_steps01, strict=True)
    assert strict.verdict == "diverged" and strict.exit_code == 1
    assert strict.first_divergence.metric == "unmatched" and strict.first_divergence.step == 2
    doc = strict.to_dict()
    assert {"side", "step", "module", "call", "role", "path", "reason"} <= set(doc["unmatched"][0])


def test_only_filter_and_per_module_tolerance(runs):
    rep = tt.diff(runs.a, runs.bug, only=r"^model\.norm$")
    assert {r.module for r in rep.rows} == {"model.norm"}
    assert rep.first_divergence.module == "model.norm"
    # A loose override for every module after the bug makes the diff agree.
    loose = {r"layers\.1\.mlp|layers\.1$|norm|lm_head|^model$|^$": {"rtol": 1.0}}
    rep = tt.diff(runs.a, runs.bug, tolerances=loose)
    assert rep.verdict == "agree", rep.summary_line
    row = next(r for r in rep.rows if r.module == PLANTED_MODULE and r.role == "output")
    assert row.rtol == 1.0 and row.tol_source.startswith("override")


def test_stats_only_runs_compare_by_sketch(runs):
    same = tt.diff(runs.stats_a, runs.stats_a)
    assert same.verdict == "agree" and same.counts["estimated"] > 0
    rep = tt.diff(runs.stats_a, runs.stats_bug)
    assert rep.verdict == "diverged"
    fd = rep.first_divergence
    assert (fd.module, fd.step, fd.role) == (PLANTED_MODULE, 0, "output")
    assert fd.estimated
    row = rep.rows[fd.row]
    assert row.kind == "estimate" and row.estimated and "sketch" in row.reason
    # Same order of magnitude as the exact value from the full runs. (Not tighter: the
    # store's count sketch hashes consecutive indices with correlated signs, so tensors
    # whose difference is constant along rows, like this one, are estimated within ~3x.)
    exact = tt.diff(runs.a, runs.bug).first_divergence.value
    assert exact / 3 < row.rel_l2 < 3 * exact


def test_mixed_full_and_stats_runs(runs):
    rep = tt.diff(runs.a, runs.stats_bug)
    assert rep.first_divergence.module == PLANTED_MODULE and rep.first_divergence.estimated


def test_to_dataframe_or_clear_error(runs):
    rep = tt.diff(runs.a, runs.a_rerun)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(TensortapError, match="pandas"):
            rep.to_dataframe()
    else:
        df = rep.to_dataframe()
        assert len(df) == len(rep.rows) and "rel_l2" in df.columns


def test_incomplete_run_is_inconclusive(runs, tmp_path):
    broken = tmp_path / "incomplete"
    shutil.copytree(runs.a_rerun, broken)
    info = json.loads((broken / "run.json").read_text())
    info.update(status="incomplete", reason="killed by a test")
    (broken / "run.json").write_text(json.dumps(info))
    rep = tt.diff(runs.a, broken)
    assert rep.verdict == "inconclusive" and rep.exit_code == 2
    assert any("incomplete" in w and "killed by a test" in w for w in rep.warnings)
    # A divergence found in what was written still counts.
    shutil.rmtree(broken)
    shutil.copytree(runs.bug, broken)
    (broken / "run.json").write_text(json.dumps({**json.loads((broken / "run.json").read_text()),
                                                  "status": "incomplete", "reason": "x"}))
    assert tt.diff(runs.a, broken).exit_code == 1


def test_corrupt_shard_rows_say_error(runs, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(runs.a_rerun, bad)
    shard = next((bad / "rank-0" / "data").glob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    for i in range(len(data) - 4000, len(data) - 3000):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    rep = tt.diff(runs.a, bad)
    errors = [r for r in rep.rows if r.status == "error"]
    assert errors and all("checksum" in r.reason or "cannot read" in r.reason for r in errors)
    assert rep.verdict == "inconclusive" and rep.exit_code == 2
    assert "could not be read" in rep.summary_line


def test_refuses_different_models_and_prompts(runs, tmp_path, tiny_model_dir):
    from tensortap.capture.config import build_config
    from tensortap.integrations.hf import capture_generate
    from tensortap.testing import tiny_llama

    deeper = tiny_llama(tmp_path / "m3", layers=3)
    r3 = capture_generate(deeper, build_config(out=str(tmp_path / "r3"), durable=False), max_new_tokens=1)["run"]
    with pytest.raises(TensortapError, match="different models: num_hidden_layers 2 vs 3"):
        tt.diff(runs.a, r3)
    other = capture_generate(tiny_model_dir, build_config(out=str(tmp_path / "p"), durable=False),
                             prompts=["Hello world", "The quick brown fox"], max_new_tokens=3)["run"]
    with pytest.raises(TensortapError, match="different inputs"):
        tt.diff(runs.a, other)
    forced = tt.diff(runs.a, other, force=True)
    assert forced.verdict == "diverged" and any("different inputs" in w for w in forced.warnings)
    # The inputs themselves are the first thing that differs.
    assert forced.first_divergence.role == "input"


def test_no_common_records_is_an_error(runs):
    with pytest.raises(TensortapError, match="no records match --only"):
        tt.diff(runs.a, runs.a_rerun, only="nothing-has-this-name")
    with pytest.raises(TensortapError, match="no common records"):
        tt.diff(runs.a, runs.a_rerun, mapping={"rules": [{"match": "^", "replace": "b.", "side": "b"}],
                                               "path": {"^": "x"}})
