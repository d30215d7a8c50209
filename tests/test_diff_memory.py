"""Memory stays bounded: diff holds about one pair of tensors, whatever the run sizes.

Two runs of 42 records × 8 MiB (≈ 670 MiB of tensors in all) are diffed in a fresh
process; its peak RSS may grow by far less than one run's data. RSS includes the pages
of memory-mapped shards that were read, so this also checks that shard mappings are
released as the diff moves on. Functional, not timed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import torch.nn as nn

import tensortap as tt

NUMEL = 2_000_000   # 8 MiB of float32 per record
BLOCKS = 20         # 20 modules × (input + output) + root = 42 records per run
MiB = 2**20


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Chain(nn.Module):
    def __init__(self, bug_at: int | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Scale(1.001 if i == bug_at else 1.0) for i in range(BLOCKS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


CHILD = r"""
import json, resource, sys
import tensortap as tt
from tensortap.compare.api import diff
a, b = tt.open(sys.argv[1]), tt.open(sys.argv[2])
a.records(); b.records()               # manifests in memory before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rep = diff(a, b)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fd = rep.first_divergence
print(json.dumps({"growth_kib": peak - base, "peak_loaded": rep.peak_loaded_bytes, "pairs": len(rep.rows),
                  "first": [fd.module, fd.role] if fd else None}))
"""


def test_diff_memory_is_bounded_by_one_pair(tmp_path):
    x = torch.randn(NUMEL, generator=torch.Generator().manual_seed(0))
    for name, bug in (("a", None), ("b", 7)):
        model = Chain(bug)
        # Few, big shards: the diff must release a shard's mapping while it reads it.
        with tt.capture(model, tmp_path / name, durable=False, flush_interval=600, shard_bytes=2**30):
            model(x)
    total = sum(r.stats.numel * 4 for n in "ab" for r in tt.open(tmp_path / n).records(kind="tensor"))
    assert total > 600 * MiB
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "a"), str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["pairs"] == 2 * BLOCKS + 2
    assert out["first"] == ["blocks.7", "output"]
    # At most one pair of tensors was held at once...
    assert out["peak_loaded"] <= 2 * NUMEL * 4
    # ...and the process grew by a few pairs' worth (tensors, float64 chunks, the shard
    # mapping window), not by the runs' 670 MiB.
    growth = out["growth_kib"] * 1024
    assert growth < 150 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB while diffing {total / MiB:.0f} MiB"
