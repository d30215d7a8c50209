"""The real `tensortap diff` and `tensortap demo` commands: exit codes, output, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_cli
from tensortap.cli.main import main
from diff_helpers import PLANTED_MODULE, runs  # noqa: F401  (fixture)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["diff", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_exit_codes_and_table(runs, capsys):
    code, out, _ = _cli(capsys, runs.a, runs.a_rerun)
    assert code == 0 and "AGREE" in out
    code, out, _ = _cli(capsys, runs.a, runs.bug)
    assert code == 1
    assert "DIVERGED" in out and PLANTED_MODULE in out and "▶" in out and "introduced" in out
    lines = [ln for ln in out.splitlines() if "DIVERGED at" in ln]
    assert len(lines) == 1 and PLANTED_MODULE in lines[0]


def test_json_and_html_outputs(runs, capsys, tmp_path):
    html = tmp_path / "out" / "report.html"
    code, out, err = _cli(capsys, runs.a, runs.bug, "--json", "--html", html)
    assert code == 1
    doc = json.loads(out)  # stdout is pure JSON
    fd = doc["first_divergence"]
    assert (fd["module"], fd["step"], fd["call"], fd["role"], fd["path"]) == (PLANTED_MODULE, 0, 0, "output", "")
    assert fd["metric"] == "token_rel_l2" and doc["rows"] and doc["unmatched"] == []
    assert html.is_file() and "HTML report" in err
    code, out, _ = _cli(capsys, runs.a, runs.a_rerun, "--json")
    assert code == 0 and json.loads(out)["first_divergence"] is None


def test_tolerance_only_strict_flags(runs, capsys):
    code, out, _ = _cli(capsys, runs.a, runs.bf16, "--json")
    assert code == 0
    code, out, _ = _cli(capsys, runs.a, runs.bf16, "--json", "--atol", "1e-6", "--rtol", "1e-5")
    assert code == 1 and json.loads(out)["first_divergence"]["module"] == "model.embed_tokens"
    code, out, _ = _cli(capsys, runs.a, runs.bf16, "--json", "--rtol", "1e-5", "--floor", runs.bf16_rerun)
    assert code == 0, json.loads(out)["summary"]
    code, out, _ = _cli(capsys, runs.a, runs.bug, "--only", r"layers\.0\.", "--json")
    assert code == 0 and all(r["module"].startswith("model.layers.0.") for r in json.loads(out)["rows"])
    code, out, _ = _cli(capsys, runs.a, runs.bug, "--json", "--tol", "^:rtol=1")
    assert code == 0
    code, _, _ = _cli(capsys, runs.a, runs.a_steps01)
    assert code == 0
    code, out, _ = _cli(capsys, runs.a, runs.a_steps01, "--strict")
    assert code == 1 and "unmatched" in out


def test_map_file_on_the_command_line(runs, capsys, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {match: '^model\\.', replace: 'm.', side: b}\n")
    code, out, _ = _cli(capsys, runs.a, runs.a_rerun, "--map", rules, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["unmatched"]  # renamed on one side only: listed, not paired
    rules.write_text("module:\n  '^model\\.': 'm.'\n")
    code, out, _ = _cli(capsys, runs.a, runs.bug, "--map", rules, "--json")
    assert code == 1 and json.loads(out)["first_divergence"]["module"] == "m.layers.1.mlp.down_proj"


def test_bad_input_is_one_line_exit_2(runs, capsys, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(runs.a_rerun, incomplete)
    info = json.loads((incomplete / "run.json").read_text())
    (incomplete / "run.json").write_text(json.dumps({**info, "status": "incomplete", "reason": "crashed"}))
    bad_map = tmp_path / "bad.yaml"
    bad_map.write_text("module: {'([': x}\n")
    cases = [
        (runs.a, tmp_path / "missing"),
        (runs.a, runs.a_rerun, "--map", bad_map),
        (runs.a, runs.a_rerun, "--map", tmp_path / "nope.json"),
        (runs.a, runs.a_rerun, "--only", "(["),
        (runs.a, runs.a_rerun, "--only", "no-such-module"),
        (runs.a, runs.a_rerun, "--tol", "lm_head:rtol=abc"),
        (runs.a, runs.a_rerun, "--floor", tmp_path / "missing-floor"),
    ]
    for args in cases:
        code, out, err = _cli(capsys, *args)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("tensortap: error:"), (args, err)
        assert "Traceback" not in err
    # An incomplete run is compared, but never reported as agreeing.
    code, out, err = _cli(capsys, runs.a, incomplete)
    assert code == 2 and "INCONCLUSIVE" in out and "crashed" in out


def test_subprocess_errors_and_help(runs, tmp_path):
    r = run_cli("diff", str(runs.a), str(tmp_path / "nope"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()][0].startswith("tensortap: error:")
    r = run_cli("diff", "--help")
    assert r.returncode == 0 and "example:" in r.stdout and "--floor" in r.stdout


def test_demo_finds_the_planted_bug(tmp_path):
    work = tmp_path / "demo"
    r = run_cli("demo", "--dir", str(work))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "found the planted bug" in r.stdout and PLANTED_MODULE in r.stdout
    assert "DIVERGED at" in r.stdout
    html = Path(r.stdout.split("HTML report:")[1].split()[0])
    assert html.is_file() and html.parent == work.resolve()
