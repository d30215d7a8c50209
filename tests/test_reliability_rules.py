"""Rules that keep runs trustworthy (issue #21): one writer per run (store/runlock.py, real
processes, many trials), filters that select nothing are errors, one name-length rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tensortap as tt
from tensortap.errors import ConfigError
from tensortap.store import runlock
from tensortap.store.verify import verify_run

HELPER = Path(__file__).parent / "helpers" / "writer_race.py"
TRIALS = 5


def _spawn(run: Path, start: float, steps: int, sleep: float, overwrite: bool, ready: Path):
    return subprocess.Popen([sys.executable, str(HELPER), str(run), str(start), str(steps), str(sleep),
                             "1" if overwrite else "0", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _records(run: Path) -> int:
    return len(tt.open(run))


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_captures_started_at_once_one_wins(tmp_path, overwrite):
    for trial in range(TRIALS):
        run = tmp_path / f"run{trial}"
        start = time.time() + 3.0  # both processes have imported torch by then
        procs = [_spawn(run, start, 20, 0.01, overwrite, tmp_path / f"ready{trial}-{i}") for i in range(2)]
        results = [_wait(p) for p in procs]
        codes = sorted(rc for rc, _ in results)
        assert codes == [0, 3], (trial, results)
        loser = next(err for rc, err in results if rc == 3)
        assert "one writer" in loser and "Traceback" not in loser, loser
        report = verify_run(run)
        assert report.ok, report
        # Exactly one capture's records: 20 forwards x (root + 3 modules) x (input + output).
        assert _records(run) == 20 * 4 * 2


def test_overwrite_of_a_run_being_written_is_refused(tmp_path):
    for trial in range(3):
        run = tmp_path / f"run{trial}"
        ready = tmp_path / f"ready{trial}"
        writer = _spawn(run, 0, 200, 0.02, False, ready)
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the first capture never started"
        rc, err = _wait(_spawn(run, 0, 5, 0.0, True, tmp_path / f"ready{trial}-b"))
        assert rc == 3 and "still writing" in err and "one writer" in err, err
        assert _wait(writer) == (0, "") or writer.returncode == 0
        assert verify_run(run).ok and _records(run) == 200 * 4 * 2


def test_a_killed_writer_leaves_a_stale_lock_that_the_next_writer_takes(tmp_path):
    run = tmp_path / "run"
    ready = tmp_path / "ready"
    writer = _spawn(run, 0, 10_000, 0.02, False, ready)
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert runlock.writer_alive(run) == writer.pid
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    assert (run / runlock.LOCK_NAME).exists() and runlock.writer_alive(run) is None
    rc, err = _wait(_spawn(run, 0, 3, 0.0, True, tmp_path / "ready-b"))
    assert rc == 0, err
    assert verify_run(run).ok and _records(run) == 3 * 4 * 2


def test_lock_rules_in_one_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = runlock.acquire(run)
    assert runlock.writer_alive(run) == os.getpid()
    with pytest.raises(ConfigError, match="one writer"):
        runlock.acquire(run)
    lock.release()
    assert runlock.writer_alive(run) is None
    again = runlock.acquire(run)
    again.release()


# -- filters that select nothing (issue #21, "silent nothing") -------------------------------
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from conftest import run_cli  # noqa: E402


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.lm_head = nn.Linear(8, 8)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x)


@pytest.mark.parametrize("kwargs,match", [
    ({"modules": ["doesnotexist"]}, "match no module of the model; its modules are named like"),
    ({"modules": ["lm_head:x"]}, "match no module"),
    ({"layers": [5]}, r"layers \[5\] do not exist: the model has layers 0-1"),
])
def test_filters_that_match_nothing_are_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        with tt.capture(_TwoLayers(), tmp_path / "r", **kwargs):
            pass
    # Refused before anything was written: the same folder can be used right away.
    with tt.capture(_TwoLayers(), tmp_path / "r", modules=["lm_head"]), torch.no_grad():
        _TwoLayers()(torch.zeros(1, 8))


def test_partly_unmatched_filters_and_unrun_steps_warn_or_fail_with_strict(tmp_path):
    net = _TwoLayers()
    with tt.capture(net, tmp_path / "w", modules=["lm_head", "nope"], steps=[0, 7]), torch.no_grad():
        net(torch.zeros(1, 8))
    warnings = tt.open(tmp_path / "w").warnings
    assert any("'nope' matches no module" in w for w in warnings)
    assert any("planned step(s) [7] never ran" in w for w in warnings)
    with pytest.raises(ConfigError, match="strict capture: module filter 'nope'"):
        with tt.capture(net, tmp_path / "s", modules=["lm_head", "nope"], strict=True):
            pass
    from tensortap.errors import TensortapError
    with pytest.raises(TensortapError, match=r"planned step\(s\) \[7\] never ran"):
        with tt.capture(net, tmp_path / "s2", modules=["lm_head"], steps=[7], strict=True), torch.no_grad():
            net(torch.zeros(1, 8))


def test_cli_reversed_step_range_and_unknown_module_exit_2(tiny_model_dir, tmp_path):
    r = run_cli("capture", str(tiny_model_dir), "--out", str(tmp_path / "a"), "--steps", "3-1")
    assert r.returncode == 2 and "range '3-1' is reversed" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("capture", str(tiny_model_dir), "--out", str(tmp_path / "b"), "--modules", "doesnotexist")
    assert r.returncode == 2 and "match no module" in r.stderr and "Traceback" not in r.stderr


def test_writer_and_reader_share_one_name_rule(tmp_path):
    from tensortap.store.format import MAX_NAME_CHARS
    from tensortap.store.verify import verify_run as verify

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ok = nn.Linear(4, 4)
            self.add_module("x" * (MAX_NAME_CHARS + 904), nn.Linear(4, 4))

        def forward(self, x):
            return getattr(self, "x" * (MAX_NAME_CHARS + 904))(self.ok(x))

    net = Net()
    with tt.capture(net, tmp_path / "r"), torch.no_grad():
        net(torch.zeros(2, 4))
    run = tt.open(tmp_path / "r")
    assert any("longer than the 4096 characters" in w for w in run.warnings)
    assert verify(tmp_path / "r").ok
    assert {r.module for r in run.records()} == {"", "ok"}
    assert tt.diff(tmp_path / "r", tmp_path / "r").verdict == "agree"


# -- one line, never "internal error"; nothing hidden (issue #21) ----------------------------
def test_read_only_output_folder_is_one_line(tiny_model_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
    try:
        r = run_cli("capture", str(tiny_model_dir), "--out", str(ro / "run"))
        assert r.returncode == 2, r.stderr
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr
        assert "Read-only file system" in r.stderr and str(ro / "run") in r.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_localize_invalid_only_regex_is_one_line(tiny_model_dir, tmp_path):
    r = run_cli("localize", str(tmp_path / "nope"), str(tiny_model_dir), "--only", "*x")
    assert r.returncode == 2 and "internal error" not in r.stderr, r.stderr


def _two_runs(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    for out, scale in ((a, 1.0), (b, 1.5)):
        net = _TwoLayers()
        torch.manual_seed(0)
        for p in net.parameters():
            torch.nn.init.normal_(p)
        with torch.no_grad():
            net.layers[1].weight.mul_(scale)
        with tt.capture(net, out), torch.no_grad():
            for _ in range(8):
                net(torch.ones(3, 8))
    return a, b


def test_diff_limit_keeps_the_first_divergence_and_all_shows_everything(tmp_path):
    a, b = _two_runs(tmp_path)
    r = run_cli("diff", str(a), str(b), "--limit", "2")
    assert r.returncode == 1 and "▶" in r.stdout, r.stdout
    full = run_cli("diff", str(a), str(b), "--all", "--json")
    rows = len(json.loads(full.stdout)["rows"])
    shown = run_cli("diff", str(a), str(b), "--all", "--limit", "3")
    assert rows > 30 and "more (--limit 0" not in shown.stdout and "pair(s) skipped" not in shown.stdout


def test_diff_of_a_run_with_itself_warns(tmp_path):
    a, _ = _two_runs(tmp_path)
    rep = tt.diff(a, a)
    assert rep.verdict == "agree" and any("is run A itself" in w for w in rep.warnings)


def test_ls_json_of_a_damaged_run_says_what_is_wrong(tmp_path):
    a, _ = _two_runs(tmp_path)
    manifest = a / "rank-0" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[3] = '{"this is": "not a record"}'
    manifest.write_text("\n".join(lines) + "\n")
    r = run_cli("ls", str(a), "--json")
    assert r.returncode == 0
    assert isinstance(json.loads(r.stdout), list)
    assert "problem:" in r.stderr
