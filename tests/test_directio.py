"""Direct (O_DIRECT) shard writes, the early hand-off of large tensors, and arena reuse.

Functional checks only: the bytes on disk, what readers and ``verify`` make of them, and
what happens when the filesystem refuses or the statistics fail. Speed is bench/run.py's.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import tensortap as tt
from tensortap.capture import hostbuf
from tensortap.capture import pipeline as pipeline_mod
from tensortap.store import directio, shardio
from tensortap.store.verify import verify_run

MiB = 2**20


def _assorted() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "odd_int8": torch.randint(-5, 5, (3,), dtype=torch.int8, generator=g),
        "bool": torch.rand(17, generator=g) > 0.5,
        "bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "f64": torch.randn(33, generator=g, dtype=torch.float64),
        "empty": torch.empty(0, 4),
        # Larger than the staging buffer and not a multiple of the block size: spans
        # several staged writes and ends in a padded, truncated tail.
        "big": torch.randn(directio.STAGE_BYTES // 4 + 1001, generator=g),
    }


def _split(path) -> tuple[dict, bytes, int]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:], 8 + n


def test_direct_and_buffered_shards_hold_the_same_bytes(tmp_path):
    tensors = _assorted()
    n_direct = shardio.write_shard(tmp_path / "direct.safetensors", tensors, direct=True)
    n_plain = shardio.write_shard(tmp_path / "plain.safetensors", tensors)
    assert n_direct == n_plain
    head_d, data_d, start_d = _split(tmp_path / "direct.safetensors")
    head_p, data_p, start_p = _split(tmp_path / "plain.safetensors")
    assert head_d == head_p and data_d == data_p
    assert start_d % directio.BLOCK == 0 and start_p % 8 == 0  # only the header padding differs
    back = load_file(tmp_path / "direct.safetensors")
    for name, t in tensors.items():
        assert torch.equal(back[name], t), name


def test_aligned_tensors_are_written_without_staging_and_read_back(tmp_path):
    from tensortap.capture.hostbuf import HostRing

    ring = HostRing(64 * MiB)
    g = torch.Generator().manual_seed(1)
    tensors = {}
    # small, aligned, odd, aligned; then more aligned pieces than one writev takes
    sizes = [300, 1 << 16, 3 * (1 << 16) + 5, 1 << 20] + [directio.ZERO_COPY_MIN // 4] * (directio._MAX_IOV + 88)
    for i, numel in enumerate(sizes):
        slot = ring.alloc(numel * 4)
        t = slot.buf.view(torch.float32)
        t.copy_(torch.randn(numel, generator=g))
        tensors[f"t{i}"] = t
    assert all(t.data_ptr() % directio.BLOCK == 0 for t in tensors.values() if t.numel() * 4 >= 2**16)
    shardio.write_shard(tmp_path / "d.safetensors", tensors, direct=True)
    back = load_file(tmp_path / "d.safetensors")
    for name, t in tensors.items():
        assert torch.equal(back[name], t), name
    ring.close(keep=False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    # The second Linear's output (512 x 4096 fp32 = 8 MiB) is above EARLY_BYTES: it goes
    # to the disk thread before its statistics are computed.
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4096))


def _capture(tmp_path, name: str, steps: int = 2, **kw) -> tuple[os.PathLike, dict]:
    model = _model()
    x = torch.randn(512, 64)
    out = tmp_path / name
    with tt.capture(model, out, **kw):
        for _ in range(steps):
            model(x)
    return out, json.loads((out / "run.json").read_text())


def test_direct_run_reads_back_and_verifies(tmp_path):
    assert pipeline_mod.EARLY_BYTES <= 512 * 4096 * 4
    out, info = _capture(tmp_path, "direct", direct_io=True)
    assert info["status"] == "complete"
    assert info["summary"]["direct_io"] is True and info["summary"]["direct_io_refused"] is None
    res = verify_run(out)
    assert res.ok and res.records_verified == res.records_with_data > 0, res.to_json()
    run = tt.open(out)
    big = [r for r in run.records() if r.shape == (512, 4096)]
    assert len(big) == 4  # two steps: the Linear's output and the root's (the same tensor)
    for r in big:
        assert r.stats is not None and r.stats.numel == 512 * 4096
    seqs = [json.loads(line)["seq"] for line in (out / "rank-0" / "manifest.jsonl").read_text().splitlines()]
    assert seqs == sorted(seqs)  # the early hand-off keeps the manifest in capture order


def test_direct_and_buffered_runs_hold_the_same_tensors(tmp_path):
    a, _ = _capture(tmp_path, "a", direct_io=True)
    b, _ = _capture(tmp_path, "b", direct_io=False)
    ra, rb = tt.open(a), tt.open(b)
    assert [r.key for r in ra.records()] == [r.key for r in rb.records()]
    for x, y in zip(ra.records(), rb.records()):
        if x.has_data:
            assert torch.equal(ra.load(x), rb.load(y)), x.key


def test_refused_direct_io_falls_back_to_buffered_writes(tmp_path, monkeypatch):
    # Fault injection: the filesystem refuses O_DIRECT (as tmpfs before Linux 6.6 and some
    # FUSE/network filesystems do).
    def refuse(path):
        raise directio.DirectUnsupported(22, f"O_DIRECT refused for {path}: Invalid argument")

    monkeypatch.setattr(shardio, "open_direct", refuse)
    out, info = _capture(tmp_path, "refused", direct_io=True)
    assert info["status"] == "complete"
    assert info["summary"]["direct_io"] is False
    assert "O_DIRECT refused" in info["summary"]["direct_io_refused"]
    assert verify_run(out).ok


def _fail_statistics(monkeypatch, when, message: str) -> None:
    """Fault injection: the writer's statistics raise for tensors matching ``when``
    (both entry points: whole tensors, and the parts of large ones)."""
    for name in ("tensor_stats", "stat_sums"):
        real = getattr(pipeline_mod, name)

        def failing(t, *a, _real=real, **k):
            if when(t):
                raise RuntimeError(message)
            return _real(t, *a, **k)

        monkeypatch.setattr(pipeline_mod, name, failing)


def test_stats_failure_of_an_early_handed_tensor_leaves_no_shard_behind(tmp_path, monkeypatch):
    _fail_statistics(monkeypatch, lambda t: t.numel() >= 512 * 4096, "injected statistics failure")
    out, info = _capture(tmp_path, "failed", steps=1)
    assert info["status"] == "incomplete"
    assert "injected statistics failure" in info["reason"]
    data = out / "rank-0" / "data"
    assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
    res = verify_run(out)
    assert not res.errors, res.to_json()
    assert all(r.shape != (512, 4096) for r in tt.open(out).records())


def test_a_new_session_reuses_the_last_sessions_copy_memory(tmp_path):
    model = _model()
    x = torch.randn(512, 64)
    arenas = []
    for i in range(2):
        with tt.capture(model, tmp_path / f"run{i}", pending_bytes=64 * MiB) as s:
            model(x)
            s.flush()
            arenas.append(s._pipeline._ring._mm)
    assert arenas[0] is arenas[1]
    # and a different budget gets memory of its own
    with tt.capture(model, tmp_path / "other", pending_bytes=48 * MiB) as s:
        model(x)
        s.flush()
        assert s._pipeline._ring._mm is not arenas[0]
    for name in ("run0", "run1", "other"):
        assert verify_run(tmp_path / name).ok


def test_spare_arena_is_not_kept_after_a_failed_pipeline(tmp_path, monkeypatch):
    monkeypatch.setattr(hostbuf, "_spares", hostbuf._SparePool())
    _fail_statistics(monkeypatch, lambda t: True, "injected")
    _, info = _capture(tmp_path, "failed", steps=1)
    assert info["status"] == "incomplete"
    assert hostbuf._spares.take(2**30) is None
