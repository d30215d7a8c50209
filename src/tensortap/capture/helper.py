"""Threads that summarise part of a large tensor while the hook summarises the rest.

In stats mode the hook reads every tensor itself (``WriterPipeline._summarise_now``), and
that read is bound by one core's memory bandwidth: in the benchmark, 78 MB per step at
4-5 GB/s. While a hook runs, the model's own threads are idle (torch's intra-op pool waits
for the Python hook to return), so other cores can read the rest of the same tensor:
two threads measured 3.7 ms against 6.7 ms for the 31 MiB logits. The hook waits for its
helpers before it returns, which keeps the read alias-safe.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from tensortap.store.record import TensorStats
from tensortap.store.sketch import CountSketch
from tensortap.store.stats import StatSums, stat_sums, stats_from_sums, tensor_stats

if TYPE_CHECKING:
    from typing import Callable

SPLIT_MIN_BYTES = 2 * 2**20
"""A tensor is shared out only if every part gets at least this much. Handing a part to
a sleeping thread and taking the GIL back cost 100-250 µs on the benchmark VM (a 1.3 MiB
tensor in two parts took 390 µs against 260 µs whole); reading 2 MiB takes about 400."""

MAX_HELPERS = 3
"""Helper threads at most (four parts): a bound on the threads a capture starts, chosen, not
measured (the benchmark VM has two cores, so one helper)."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class StatsHelper:
    """A small pool of threads computing ``stat_sums`` of parts of a tensor."""

    def __init__(self, helpers: int, initializer: Callable[[], None] | None = None) -> None:
        self.helpers = helpers
        self._pool = ThreadPoolExecutor(helpers, thread_name_prefix="tensortap-stats",
                                        initializer=initializer)

    @classmethod
    def for_this_machine(cls, initializer: Callable[[], None] | None = None) -> StatsHelper | None:
        """One helper per further core (at most ``MAX_HELPERS``); None on one core."""
        n = min(MAX_HELPERS, usable_cores() - 1)
        return cls(n, initializer) if n > 0 else None

    def stats(self, t: torch.Tensor, sk: CountSketch | None) -> TensorStats:
        """``tensor_stats(t, sk)``, computed in parts by this thread and the helpers."""
        n = t.numel() * (2 if t.is_complex() else 1)
        parts = min(self.helpers + 1, t.numel() * t.element_size() // SPLIT_MIN_BYTES)
        if parts < 2:
            return tensor_stats(t, sketch=sk)
        cuts = [n * i // parts for i in range(parts + 1)]
        sketches = [CountSketch(sk.dim) if sk is not None else None for _ in range(parts - 1)]
        futures: list[Future[StatSums]] = []
        try:
            for i, part_sk in enumerate(sketches, start=1):
                futures.append(self._pool.submit(stat_sums, t, cuts[i], cuts[i + 1], part_sk))
            sums = stat_sums(t, 0, cuts[1], sk)
        finally:
            # Even on an error here: the helpers read ``t``, which the model may change
            # once the hook returns.
            rest = [f.result() for f in futures]
        for part in rest:
            sums = sums + part
        if sk is not None:
            for part_sk in sketches:
                sk.acc.add_(part_sk.acc)
        return stats_from_sums(t, sums)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
