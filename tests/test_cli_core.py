"""The real `tensortap` command: capture, ls, show, errors and exit codes."""

from __future__ import annotations

import json

from conftest import run_cli


def test_capture_ls_show_roundtrip(tmp_path, tiny_model_dir):
    out = tmp_path / "runs" / "a"
    r = run_cli("capture", str(tiny_model_dir), "--out", str(out), "--prompt", "Paris is the capital of",
                "--max-new-tokens", "3", "--modules", r"layers\.1\.", "lm_head", "--steps", "0,1")
    assert r.returncode == 0, r.stderr
    assert "captured" in r.stdout
    r = run_cli("ls", str(out), "--json")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert recs and {"module", "step", "call", "role", "path", "shape", "dtype"} <= set(recs[0])
    assert {x["step"] for x in recs} == {0, 1}
    assert any(x["module"] == "model.layers.1.mlp" for x in recs)
    r = run_cli("ls", str(out), "--module", "mlp$", "--step", "0")
    assert r.returncode == 0 and "model.layers.1.mlp" in r.stdout and "absmax" in r.stdout
    r = run_cli("show", str(out), "model.layers.1.mlp", "--step", "0")
    assert r.returncode == 0, r.stderr
    assert "first 8 values" in r.stdout and "tokens" in r.stdout


def test_errors_are_one_line_exit_2(tmp_path, tiny_model_dir):
    cases = [
        ("ls", str(tmp_path / "nope")),
        ("show", str(tmp_path / "nope"), "x"),
        ("capture", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o1")),
        ("capture", str(tiny_model_dir), "--out", str(tmp_path / "o2"), "--modules", "(["),
        ("capture", str(tiny_model_dir), "--out", str(tmp_path / "o3"), "--config", '{"bogus": 1}'),
        ("capture", str(tiny_model_dir), "--out", str(tmp_path / "o4"), "--steps", "a,b"),
    ]
    for args in cases:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("tensortap: error:"), (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_capture_refuses_non_empty_out_then_overwrites(tmp_path, tiny_model_dir):
    out = tmp_path / "a"
    base = ("capture", str(tiny_model_dir), "--out", str(out), "--modules", "lm_head", "--max-new-tokens", "1")
    assert run_cli(*base).returncode == 0
    r = run_cli(*base)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert run_cli(*base, "--overwrite").returncode == 0


def test_show_unknown_module_and_help_examples(tmp_path, tiny_model_dir):
    out = tmp_path / "a"
    assert run_cli("capture", str(tiny_model_dir), "--out", str(out), "--modules", "lm_head",
                   "--max-new-tokens", "1").returncode == 0
    r = run_cli("show", str(out), "model.nothing")
    assert r.returncode == 2 and "no records" in r.stderr
    for cmd in ("capture", "ls", "show", "demo"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and "example:" in r.stdout, cmd
