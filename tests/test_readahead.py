"""Reading ahead for a diff: the right bytes, within the window, never in the way.

The read-ahead changes no result, only when the disk is read; what can go wrong is
reading the wrong bytes (useless: the diff would still wait for the disk), reading too
far ahead (evicting what the diff has yet to read), or failing loudly or hanging where the
diff itself would report the problem. Speed is measured in bench/, not here.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap.compare.api import _ranges_read, diff
from tensortap.compare.mapping import resolve_mapping
from tensortap.compare.pair import PairContext, stored_identical
from tensortap.compare.pairing import pair_items
from tensortap.compare.tolerance import TolerancePolicy
from tensortap.store.readahead import ReadAhead

MiB = 2**20


def _settled(ahead: ReadAhead, want: int, timeout: float = 30.0) -> int:
    """``bytes_read`` once it has reached ``want`` and stayed there a moment (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while ahead.bytes_read < want and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a reader that ignored its window would go on past ``want``
    return ahead.bytes_read


def test_the_reader_stays_within_its_window_and_skips_what_the_consumer_passed(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(bytes(range(256)) * (10 * MiB // 256))
    groups = [[(f, i * MiB, MiB)] for i in range(10)]
    ahead = ReadAhead(groups, window=3 * MiB)
    try:
        assert _settled(ahead, 3 * MiB) == 3 * MiB  # groups 0-2, then it waits
        ahead.reached(6)  # 3-5 are passed: skipped; 6-8 fill the window again
        assert _settled(ahead, 6 * MiB) == 6 * MiB
        ahead.reached(9)
        assert _settled(ahead, 7 * MiB) == 7 * MiB
    finally:
        ahead.close()
    assert not ahead._thread.is_alive()


def test_missing_files_and_ranges_past_the_end_are_left_to_the_consumer(tmp_path):
    f = tmp_path / "short.bin"
    f.write_bytes(b"x" * 1000)
    with ReadAhead([[(tmp_path / "gone.bin", 0, 100)], [(f, 500, 10_000)], [(f, 0, 10)]]) as ahead:
        assert _settled(ahead, 510) == 510  # what exists was read; nothing raised
    with ReadAhead([[], []]) as idle:
        assert idle._thread is None  # nothing to read: no thread


def _capture(tmp_path, models: dict, x: torch.Tensor, steps: int = 1, **options) -> None:
    """A run per model (``tmp_path / name``), each step flushed (a shard or more per step)."""
    for name, make in models.items():
        torch.manual_seed(1)  # the same weights for every run
        model = make().eval()
        with torch.no_grad(), tt.capture(model, tmp_path / name, **options) as s:
            for _ in range(steps):
                model(x)
                s.flush()


class _Net(nn.Module):
    def __init__(self, bump: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Linear(64, 256)
        self.b = nn.Linear(256, 64)
        with torch.no_grad():
            self.b.bias.add_(bump)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class _WithHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Net()
        self.lm_head = nn.Linear(64, 300)  # its output is compared as logits (top-1, KL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.body(x))


def test_diff_reads_ahead_exactly_the_bytes_it_loads(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    _capture(tmp_path, {"a": _Net, "b": lambda: _Net(1e-3)}, x, steps=3, shard_bytes=64 * 1024)
    run_a, run_b = tt.open(tmp_path / "a"), tt.open(tmp_path / "b")
    assert len({r.shard for r in run_a.records() if r.has_data}) > 2
    mapper = resolve_mapping("auto", run_a, run_b)
    pairing = pair_items(list(mapper.items(run_a, "a")), list(mapper.items(run_b, "b")))
    groups = _ranges_read(pairing, {}, PairContext(run_a, run_b, None, TolerancePolicy()))
    assert len(groups) == len(pairing.pairs)

    ranges = [r for g in groups for r in g]
    assert len(ranges) == len(set(ranges))  # a shared stored tensor is read once
    shards = {p for p, _, _ in ranges}
    headers = [r for r in ranges if r[1] == 0]
    assert sorted(p for p, _, _ in headers) == sorted(shards)  # each shard's header, once
    by_place = {(p, off): n for p, off, n in ranges}
    ctx = PairContext(run_a, run_b, None, TolerancePolicy())
    identical = 0
    for (ia, ib), group in zip(pairing.pairs, groups):
        if stored_identical(ia, ib, ctx):
            identical += 1
            assert group == [], "a pair known identical from its checksums is not read"
            continue
        for run, it in ((run_a, ia), (run_b, ib)):
            rec = it.record
            path = run.shard_path(rec)
            data = run.load(rec).contiguous().view(torch.uint8).numpy().tobytes()
            hits = [(off, n) for (p, off), n in by_place.items() if p == path and n == len(data)
                    and path.read_bytes()[off:off + n] == data]
            assert hits, f"no read-ahead range holds {rec.label}"
    assert 0 < identical < len(pairing.pairs)  # the runs agree up to module b

    rep = diff(tmp_path / "a", tmp_path / "b")
    assert rep.verdict == "diverged"
    assert rep.first_divergence.module == "b"


def test_pairs_identical_by_checksum_report_what_reading_them_would(tmp_path, monkeypatch):
    """Rows of pairs the manifests show identical (not read) equal the rows of the same
    pairs compared from their data, logits included."""
    from tensortap.compare import pair as pair_mod

    torch.manual_seed(0)
    _capture(tmp_path, {"a": _WithHead, "b": _WithHead}, torch.randn(8, 64))
    real, known = pair_mod.stored_identical, []

    def counting(ia, ib, ctx):
        known.append((ia.module, real(ia, ib, ctx)))
        return known[-1][1]

    monkeypatch.setattr(pair_mod, "stored_identical", counting)
    fast = diff(tmp_path / "a", tmp_path / "b")
    assert ("lm_head", True) in known and sum(k for _, k in known) > 5
    known.clear()
    slow = diff(tmp_path / "a", tmp_path / "b", read_all=True)
    assert known and not any(k for _, k in known)  # every pair read
    assert fast.verdict == slow.verdict == "agree"
    assert len(fast.rows) == len(slow.rows) > 5
    assert slow.settings["read_all"] and not fast.settings["read_all"]
    for rf, rs in zip(fast.rows, slow.rows):
        df, ds = rf.to_dict(), rs.to_dict()
        assert df.keys() == ds.keys()
        for k in df:
            if isinstance(ds[k], float):
                assert df[k] == pytest.approx(ds[k], rel=1e-12, abs=1e-300), (rf.module, k)
            else:
                assert df[k] == ds[k], (rf.module, k)


def test_cli_read_all_reads_every_pair(tmp_path):
    from conftest import run_cli

    _capture(tmp_path, {"a": _Net, "b": _Net}, torch.randn(4, 64))
    for flag, want in (([], False), (["--read-all"], True)):
        p = run_cli("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json", *flag)
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        assert report["settings"]["read_all"] is want and report["verdict"] == "agree"
    assert "--read-all" in run_cli("diff", "--help").stdout
