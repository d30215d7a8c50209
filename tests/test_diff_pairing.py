"""Pairing records: rename maps, unmatched listing, shapes, NaNs, values (real captures of small models)."""

from __future__ import annotations

import json

import pytest
import torch

import tensortap as tt
from tensortap.compare.align import align, row_plan
from tensortap.compare.mapping import load_rules_file, rules_from
from tensortap.errors import ConfigError, TensortapError
from diff_helpers import TwoStage, capture_plain

RENAME = {r"^body$": "encoder", r"^out$": "head"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    return {
        "a": capture_plain(TwoStage(), root / "a"),
        "renamed": capture_plain(TwoStage("body", "out"), root / "renamed"),
        "renamed_bug": capture_plain(TwoStage("body", "out", scale=1.01), root / "renamed-bug"),
        "squeezed": capture_plain(TwoStage(unsqueeze=True), root / "squeezed"),
        "nan": capture_plain(TwoStage(nan=True), root / "nan"),
        "wide": capture_plain(TwoStage(), root / "wide", x=torch.linspace(-1, 1, 28).reshape(4, 7)),
        "ints": capture_plain(TwoStage(), root / "ints", x=torch.arange(24).reshape(4, 6)),
    }


def test_without_a_map_renamed_modules_are_unmatched(plain):
    rep = tt.diff(plain["a"], plain["renamed"])
    # Only the root is common; every other record is listed with the reason.
    assert {r.module for r in rep.rows} == {""}
    sides = {(u.side, u.module) for u in rep.unmatched}
    assert sides == {("a", "encoder"), ("a", "head"), ("b", "body"), ("b", "out")}
    assert all("has no module" in u.reason for u in rep.unmatched)
    assert rep.verdict == "agree" and "only in one run" in rep.summary_line
    assert tt.diff(plain["a"], plain["renamed"], strict=True).exit_code == 1


@pytest.mark.parametrize("form", ["dict", "yaml", "json", "rules"])
def test_rename_map_pairs_records(plain, tmp_path, form):
    if form == "dict":
        mapping = RENAME
    elif form == "yaml":
        mapping = tmp_path / "rules.yaml"
        mapping.write_text("module:\n  '^body$': encoder\n  '^out$': head\n")
    elif form == "json":
        mapping = tmp_path / "rules.json"
        mapping.write_text(json.dumps(RENAME))
    else:
        mapping = {"rules": [{"match": "^body$", "replace": "encoder", "side": "b"},
                             {"match": "^out$", "replace": "head", "side": "b"}]}
    rep = tt.diff(plain["a"], plain["renamed"], mapping=mapping)
    assert rep.unmatched == [] and rep.verdict == "agree"
    assert {r.module for r in rep.rows} == {"", "encoder", "head"}
    row = next(r for r in rep.rows if r.module == "head" and r.role == "output")
    assert row.module_b == "out"
    bug = tt.diff(plain["a"], plain["renamed_bug"], mapping=mapping)
    assert (bug.first_divergence.module, bug.first_divergence.role) == ("head", "output")


def test_side_rule_and_duplicate_keys_are_reported(plain):
    # Renaming both of B's modules onto one name: the second is listed, never dropped.
    rep = tt.diff(plain["a"], plain["renamed"], mapping={"rules": [
        {"match": "^(body|out)$", "replace": "encoder", "side": "b"}]})
    dups = [u for u in rep.unmatched if "duplicate" in u.reason]
    assert dups and all(u.side == "b" and u.raw_module == "out" for u in dups)


def test_leading_singleton_dims_are_squeezed(plain):
    rep = tt.diff(plain["a"], plain["squeezed"])
    head_out = next(r for r in rep.rows if r.module == "head" and r.role == "output")
    assert head_out.aligned == "squeezed" and head_out.status == "ok"
    assert head_out.shape_a == [4, 6] and head_out.shape_b == [1, 4, 6]
    assert rep.verdict == "agree"


def test_shape_and_dtype_mismatch_rows(plain):
    rep = tt.diff(plain["a"], plain["wide"])
    assert rep.verdict == "diverged"
    assert {r.status for r in rep.rows if r.kind == "tensor"} == {"mismatch"}
    fd = rep.first_divergence
    assert fd.status == "mismatch" and fd.metric == "shape" and "[4, 6] vs [4, 7]" in fd.value
    rep = tt.diff(plain["a"], plain["ints"])
    root_in = next(r for r in rep.rows if r.module == "" and r.role == "input")
    assert root_in.status == "mismatch" and root_in.tripped == "dtype"


def test_nan_disagreement_diverges(plain):
    rep = tt.diff(plain["a"], plain["nan"])
    fd = rep.first_divergence
    assert (fd.module, fd.role, fd.metric) == ("", "output", "nan_inf")
    row = rep.rows[fd.row]
    assert row.nan_mismatch == 1 and row.rel_l2 == 0.0


def test_rule_file_errors_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("module: {'(': x}\n")
    with pytest.raises(ConfigError, match="invalid regex"):
        load_rules_file(bad)
    bad.write_text("module: [1, 2, 3]\n")
    with pytest.raises(ConfigError):
        load_rules_file(bad)
    bad.write_text(": : :\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_rules_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules_file(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="side"):
        rules_from({"rules": [{"match": "a", "replace": "b", "side": "c"}]})


def test_engine_without_adapter_compares_raw_names_and_says_so(plain, tmp_path):
    """An engine with no anchor adapter: one clear line and a raw-name diff (issue 19),
    never an empty result or an error."""
    other = tmp_path / "other"
    import shutil

    shutil.copytree(plain["a"], other)
    info = json.loads((other / "run.json").read_text())
    info["engine"] = {"name": "some-engine"}
    (other / "run.json").write_text(json.dumps(info))
    rep = tt.diff(plain["a"], other)
    assert rep.verdict == "agree" and rep.rows
    assert any("no anchor adapter for engine 'some-engine'" in w and "--map FILE" in w
               for w in rep.warnings), rep.warnings
    assert tt.diff(plain["a"], other, mapping="none").verdict == "agree"


def test_token_rows_align_by_request_and_position():
    # A has [pad, t0, t1] for request 0; B has [t0, t1, pad] (different padding side).
    ta = {"batch_shape": [1, 3], "request": [-1, 0, 0], "position": [-1, 0, 1]}
    tb = {"batch_shape": [1, 3], "request": [0, 0, -1], "position": [0, 1, -1]}
    plan = row_plan(ta, tb)
    a = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]]])
    b = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [7.0, 7.0]]])
    al = align(a, b, plan)
    assert al.how == "tokens" and torch.equal(al.a, al.b)
    assert al.locate(3) == ([0, 2, 1], (0, 1))
