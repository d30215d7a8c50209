"""Every CLI command on bad input: exit 2, one line on stderr, no traceback.

Commands run in-process through ``tensortap.cli.main.main`` (the same function the
``tensortap`` script calls), plus a few through a real subprocess.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli
from reliability_support import assert_one_line_error, cli, flip_record_byte, make_run
from tensortap.cli.main import COMMAND_MODULES
from tensortap.store.reader import Run

HAS_DIFF = "tensortap.cli.cmd_diff" in COMMAND_MODULES
HAS_CONVERT = "tensortap.cli.cmd_convert" in COMMAND_MODULES
HAS_LOCALIZE = "tensortap.cli.cmd_localize" in COMMAND_MODULES


@pytest.fixture
def bad_runs(tmp_path):
    """Paths that are not readable runs, each in a different way."""
    good = make_run(tmp_path / "good")
    (tmp_path / "file.txt").write_text("not a run")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.bin").write_bytes(b"\x00" * 16)
    future = make_run(tmp_path / "future")
    info = json.loads((future / "run.json").read_text())
    (future / "run.json").write_text(json.dumps({**info, "format_version": 7}))
    weird = tmp_path / "we\x1b[31mird\nname"
    weird.mkdir()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return good, {
        "missing": tmp_path / "nope",
        "a file": tmp_path / "file.txt",
        "empty dir": tmp_path / "empty",
        "unrelated dir": tmp_path / "other",
        "future version": future,
        "control chars in path": weird,
        "symlink loop": loop,
    }


def _reading_commands(run: str, good: str, scratch: str) -> dict[str, list[str]]:
    cmds = {"ls": ["ls", run], "show": ["show", run, "0"], "verify": ["verify", run]}
    if HAS_DIFF:
        cmds["diff A"] = ["diff", run, good]
        cmds["diff B"] = ["diff", good, run]
    if HAS_CONVERT:
        cmds["convert"] = ["convert", run, scratch]
    if HAS_LOCALIZE:
        cmds["localize"] = ["localize", run, scratch]
    return cmds


def test_reading_commands_on_unreadable_runs(bad_runs, capsys):
    good, cases = bad_runs
    scratch = good.parent / "scratch-out"
    for case, path in cases.items():
        for name, argv in _reading_commands(str(path), str(good), str(scratch)).items():
            rc, out, err = cli(capsys, *argv)
            assert_one_line_error(rc, err, f"{name} on {case}")
    assert not scratch.exists()


def test_reading_commands_bad_options(bad_runs, capsys):
    good, _ = bad_runs
    g = str(good)
    cases = {
        "ls: invalid regex": ["ls", g, "--module", "("],
        "ls: regex repeat overflow": ["ls", g, "--module", "a{4294967296}"],
        "ls: regex nested too deep": ["ls", g, "--module", "(" * 5000 + ")" * 5000],
        "show: no such module": ["show", g, "no.such.module"],
        "show: filters match nothing": ["show", g, "0", "--step", "99"],
    }
    if HAS_DIFF:
        cases.update({
            "diff: invalid --only": ["diff", g, g, "--only", "a{4294967296}"],
            "diff: bad --tol": ["diff", g, g, "--tol", "nonsense"],
            "diff: missing map file": ["diff", g, g, "--map", str(good.parent / "no-map.json")],
            "diff: html into a directory": ["diff", g, g, "--html", str(good.parent)],
            "diff: nan tolerance": ["diff", g, g, "--atol", "nan"],
        })
    for what, argv in cases.items():
        rc, out, err = cli(capsys, *argv)
        assert_one_line_error(rc, err, what)


def test_damaged_record_in_show_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "r")
    rec = next(r for r in Run(run).records(module="^2$", step=1, role="output"))
    flip_record_byte(run, rec)
    rc, out, err = cli(capsys, "show", str(run), "2", "--step", "1", "--role", "output")
    assert_one_line_error(rc, err, "show on a flipped byte")
    assert "checksum" in err and rec.shard in err


def test_argparse_errors_exit_2_without_traceback(capsys):
    for argv in (["no-such-command"], ["ls"], ["show", "x"], ["verify"], ["verify", "x", "--limit", "many"],
                 ["capture", "m"], ["ls", "x", "--step", "one"]):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and "Traceback" not in err, (argv, err)
        assert err.strip().splitlines()[-1].startswith("tensortap"), (argv, err)


def test_capture_bad_input(tmp_path, tiny_model_dir, capsys):
    m = str(tiny_model_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "wide"}')
    out = str(tmp_path / "out")
    cases = {
        "missing model dir": ["capture", str(tmp_path / "nope"), "--out", out],
        "model dir without config": ["capture", str(tmp_path / "busy"), "--out", out],
        "broken model config": ["capture", str(broken), "--out", out],
        "unknown dtype": ["capture", m, "--out", out, "--dtype", "float99"],
        "unknown config key": ["capture", m, "--out", out, "--config", '{"bogus": 1}'],
        "config not JSON nor file": ["capture", m, "--out", out, "--config", "nonsense"],
        "config nested too deep": ["capture", m, "--out", out, "--config", "{" + '"a":{' * 3000],
        "config file not UTF-8": ["capture", m, "--out", out, "--config", str(tmp_path / "binary.json")],
        "config ~nouser": ["capture", m, "--out", out, "--config", "~no_such_user_xyz/c.json"],
        "config name too long": ["capture", m, "--out", out, "--config", "x" * 5000],
        "infinite flush interval": ["capture", m, "--out", out, "--config", '{"flush_interval": 1e999}'],
        "invalid module regex": ["capture", m, "--out", out, "--modules", "("],
        "regex repeat overflow": ["capture", m, "--out", out, "--modules", "a{4294967296}"],
        "bad step list": ["capture", m, "--out", out, "--steps", "1-x"],
        "zero new tokens": ["capture", m, "--out", out, "--max-new-tokens", "0"],
        "out is a file": ["capture", m, "--out", str(tmp_path / "a_file")],
        "out is someone's folder": ["capture", m, "--out", str(tmp_path / "busy")],
        "out is someone's folder, overwrite": ["capture", m, "--out", str(tmp_path / "busy"), "--overwrite"],
    }
    for what, argv in cases.items():
        rc, stdout, err = cli(capsys, *argv)
        assert_one_line_error(rc, err, f"capture: {what}")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"   # never deleted
    assert not os.path.exists(out)


def test_real_subprocess_exit_codes(tmp_path):
    run = make_run(tmp_path / "r")
    r = run_cli("ls", str(tmp_path / "missing"))
    assert_one_line_error(r.returncode, r.stderr, "ls subprocess")
    r = run_cli("verify", str(run))
    assert r.returncode == 0 and "ok:" in r.stdout, r.stdout + r.stderr
    rec = Run(run).records(module="^0$", step=0, role="output")[0]
    shard = flip_record_byte(run, rec)
    r = run_cli("verify", str(run))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{shard.name} [{rec.label}]: checksum mismatch" in r.stdout, r.stdout
