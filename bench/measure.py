"""Timing, memory and machine helpers for the benchmark.

The benchmark machine is shared (other jobs run beside it) and has two cores, so every
comparison is made *within one run*: variants are interleaved round by round (the order
rotating each round, so drift and background load hit all of them alike) and the figure
is the median over rounds.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

Timed = Callable[[], float]
"""A variant: does its own untimed set-up and tear-down, returns the seconds it timed."""


def interleave(variants: dict[str, Timed], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant once per round, rotating the order; returns each one's timings.

    The first ``warmup`` rounds are run and discarded (lazy imports, page cache, allocator).
    A full garbage collection, an ``os.sync()`` and (where permitted) a page-cache drop run
    (untimed) before every variant.
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            # Garbage left by one variant must not be collected on another's clock, and
            # its dirty pages not written back by another's fsync (ext4's journal commit
            # writes out other files' data too).
            gc.collect()
            os.sync()
            drop_page_cache()
            t = variants[n]()
            if r >= warmup:
                times[n].append(t)
    return times


_DROP_CACHES = "/proc/sys/vm/drop_caches"


def drop_page_cache() -> bool:
    """Ask Linux to drop clean page cache (needs root; False where it cannot).

    Why: on the benchmark VM a buffered ``write()`` ran at 3 GB/s when the kernel had freed
    pages to reuse and at 0.3 GB/s once the page cache had grown over fresh memory (the
    host backing every new page): the same baseline varied 8x within an hour. Dropping
    the cache before every variant gives buffered writers (the baselines, plain
    ``write()``, ``durable=False``) their fast case every time, which is the conservative
    choice for tensortap's durable default, which writes around the page cache.
    """
    try:
        with open(_DROP_CACHES, "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timer() -> Callable[[], float]:
    """``stop = timer(); ...; seconds = stop()``."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def cpu_timer(key: str, into: dict[str, list[float]]) -> Callable[[], float]:
    """Like ``timer``, and also appends the process CPU time (all threads) to ``into[key]``."""
    t0, c0 = time.perf_counter(), time.process_time()

    def stop() -> float:
        into.setdefault(key, []).append(time.process_time() - c0)
        return time.perf_counter() - t0
    return stop


# -- memory --------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since start or the last ``reset_peak_rss``."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- the machine ---------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


@dataclass
class Machine:
    nproc: int = field(default_factory=lambda: os.cpu_count() or 0)
    cpu: str = field(default_factory=cpu_model)
    ram_gib: float = field(default_factory=ram_gib)
    kernel: str = field(default_factory=platform.release)
    python: str = field(default_factory=platform.python_version)

    def describe(self) -> dict[str, str]:
        import torch

        from tensortap import kernels
        from tensortap.store.stats import CRC32_IMPL

        kernels.load()
        return {
            "CPU": f"{self.cpu}, {self.nproc} cores (nproc)",
            "RAM": f"{self.ram_gib:.1f} GiB",
            "OS": f"Linux {self.kernel}",
            "Python": self.python,
            "torch": f"{torch.__version__} (threads set to 1)",
            "CRC32": f"{CRC32_IMPL} (tensortap's checksum implementation)",
            "statistics and diff metrics": f"{kernels.status()} (tensortap.kernels)",
            "page cache": ("dropped before every timed variant" if os.access(_DROP_CACHES, os.W_OK)
                           else "not dropped between variants (no permission): buffered-write figures vary more"),
        }
