"""Host memory for hook-time copies: a FIFO ring the size of the pending-bytes budget.

Why a ring and not ``torch.empty`` per copy: the writer releases copies in capture
order, so a ring never fragments; fresh allocations of a few MiB are page-faulted on
first touch (measured 2.3 GB/s against 6 GB/s for a warm buffer, on the benchmark
machine), while ring memory is reused step after step; and the ring's capacity *is* the
budget, so memory is bounded by construction. The arena is one anonymous mapping of
ordinary pages. Transparent huge pages (``MADV_HUGEPAGE``) were tried and dropped: on the
benchmark VM first-touching 128 MiB of them took anywhere from 19 to 291 ms (the kernel
compacting memory, the host backing 2 MiB at a time), 4 KiB pages a steady 55-63 ms.
Only touched pages are resident, and allocation restarts at offset 0 whenever the
ring empties and wraps early to the start once past ``max(64 MiB, 2 x peak in use)``, so
resident memory follows what the capture needs rather than the budget.

Not thread-safe: the pipeline calls it under its own lock.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from collections import deque

import torch

ALIGN = 64
"""Every slot starts on a cache line (and so on any dtype's alignment)."""

PAGE_ALIGN = 4096
BIG_SLOT = 64 * 2**10
"""Slots of at least this many bytes start on a page: the disk thread can then hand them
to an ``O_DIRECT`` write as they are, without a copy (store/directio.py)."""


def _align_of(nbytes: int) -> int:
    return PAGE_ALIGN if nbytes >= BIG_SLOT else ALIGN


def _round_up(x: int, align: int) -> int:
    return -(-x // align) * align

_MIN_SPAN = 64 * 2**20
_POPULATE_LEAD = 16 * 2**20
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


def _libc_madvise():
    try:
        f = ctypes.CDLL(None, use_errno=True).madvise
    except (AttributeError, OSError):
        return None
    f.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    f.restype = ctypes.c_int
    return f


_madvise = _libc_madvise()
_MADV_FREE = getattr(mmap, "MADV_FREE", 8)


class _SparePool:
    """The arena of the last closed ring, kept for the next session in this process.

    A new session otherwise starts on fresh pages, and first-touching them (the kernel
    zeroing each page, on a virtual machine the host backing it too) cost up to 2 ms per
    MiB on the benchmark machine: more than the capture itself on a first step. The pages
    are handed back with ``MADV_FREE``, so the kernel reclaims them whenever it needs the
    memory, and a session that reuses them before that finds them still mapped.
    Only one arena is kept, and only reused by a ring of the same capacity.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: tuple[mmap.mmap, torch.Tensor, int] | None = None

    def take(self, capacity: int) -> tuple[mmap.mmap, torch.Tensor, int] | None:
        with self._lock:
            spare = self._spare
            if spare is None or len(spare[0]) != capacity:
                return None
            self._spare = None
            return spare

    def give(self, mm: mmap.mmap, arena: torch.Tensor, populated: int) -> None:
        if populated > 0 and _madvise is not None:
            _madvise(ctypes.c_void_p(arena.data_ptr()), ctypes.c_size_t(populated), _MADV_FREE)
        with self._lock:
            old, self._spare = self._spare, (mm, arena, max(populated, 0))
        if old is not None:
            _close_mapping(old[0])


def _close_mapping(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # a tensor still views it; the mapping is freed with that tensor


_spares = _SparePool()


class Slot:
    """One allocation: ``buf`` (uint8 tensor of ``nbytes``) until released."""

    __slots__ = ("start", "end", "nbytes", "buf", "done")

    def __init__(self, start: int, end: int, nbytes: int, buf: torch.Tensor) -> None:
        self.start = start
        self.end = end
        self.nbytes = nbytes
        self.buf = buf
        self.done = False


class HostRing:
    """FIFO allocator over one lazily mapped arena of ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._mm: mmap.mmap | None = None
        self._arena: torch.Tensor | None = None
        self._live: deque[Slot] = deque()
        self._head = 0
        self._peak_span = 0
        self._max_end = 0
        self._populated = 0
        self.failed = False
        """The arena could not be mapped; callers fall back to plain allocations."""

    # -- arena ------------------------------------------------------------------------
    def map(self) -> torch.Tensor | None:
        """Reserve the arena's address space (nothing is resident until touched)."""
        return self._map()

    def _map(self) -> torch.Tensor | None:
        if self._arena is None and not self.failed:
            spare = _spares.take(self.capacity)
            if spare is not None:
                self._mm, self._arena, self._populated = spare
                return self._arena
            try:
                mm = mmap.mmap(-1, self.capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                self._mm = mm
                self._arena = torch.frombuffer(mm, dtype=torch.uint8)
            except (OSError, ValueError, OverflowError):
                # A budget larger than the address space allows, or no mmap at all.
                self.failed = True
        return self._arena

    def close(self, keep: bool = True) -> None:
        """Drop the arena: kept for the next ring in this process (``_SparePool``) when
        ``keep`` and no slot is live, else unmapped once no copy views it any more."""
        live = bool(self._live)
        self._live.clear()
        arena, self._arena = self._arena, None
        mm, self._mm = self._mm, None
        if mm is None:
            return
        if keep and not live and arena is not None:
            _spares.give(mm, arena, self._populated)
        else:
            _close_mapping(mm)

    # -- allocation -------------------------------------------------------------------
    def in_use(self) -> int:
        """Bytes between the oldest live slot and the head (gaps from wrapping included)."""
        if not self._live:
            return 0
        tail = self._live[0].start
        return self._head - tail if self._head > tail else self.capacity - tail + self._head

    def fits(self, nbytes: int) -> bool:
        """Whether a slot of ``nbytes`` can ever be allocated (when the ring is empty)."""
        return _round_up(max(nbytes, 1), _align_of(nbytes)) <= self.capacity

    def alloc(self, nbytes: int) -> Slot | None:
        """A slot of ``nbytes``, or None when there is no room now (or it can never fit)."""
        align = _align_of(nbytes)
        size = _round_up(max(nbytes, 1), align)
        if size > self.capacity:
            return None
        arena = self._map()
        if arena is None:
            return None
        if not self._live:
            self._head = 0  # empty: start over, so touched memory stays small
            start = 0
        else:
            tail = self._live[0].start
            head = _round_up(self._head, align)
            if self._head > tail:  # in use: [tail, head); free: [head, cap) and [0, tail)
                soft = max(_MIN_SPAN, 2 * self._peak_span)
                if size <= tail and (head + size > soft or head + size > self.capacity):
                    start = 0
                elif head + size <= self.capacity:
                    start = head
                else:
                    return None
            else:  # wrapped: in use [tail, cap) and [0, head); free: [head, tail)
                if head + size <= tail:
                    start = head
                else:
                    return None
        slot = Slot(start, start + size, nbytes, arena[start:start + nbytes])
        self._live.append(slot)
        self._head = start + size
        self._max_end = max(self._max_end, self._head)
        self._peak_span = max(self._peak_span, self.in_use())
        return slot

    def populate_ahead(self, lead: int = _POPULATE_LEAD) -> None:
        """Fault in the pages just past the furthest slot, off the hook's critical path.

        Called by the writer thread without the pipeline's lock: ``MADV_POPULATE_WRITE``
        maps pages without changing their contents, so a hook copying into the same
        pages at the same moment is unaffected. Pages never used by a slot stay within
        ``lead`` bytes of the furthest one, so resident memory still follows use.
        """
        arena = self._arena
        if arena is None or self._populated < 0:
            return
        target = min(self.capacity, self._max_end + lead)
        target -= target % mmap.PAGESIZE
        if target <= self._populated:
            return
        # Through ctypes, which releases the GIL for the call (mmap.madvise holds it while
        # the kernel zeroes megabytes, stalling the hooks' Python code), and on the
        # address torch already holds, so no extra buffer export blocks close().
        base = arena.data_ptr()
        if base % mmap.PAGESIZE or _madvise is None:
            self._populated = -1
            return
        rc = _madvise(ctypes.c_void_p(base + self._populated),
                      ctypes.c_size_t(target - self._populated), _MADV_POPULATE_WRITE)
        # rc != 0: a kernel before 5.14 (EINVAL); first touch faults the pages instead.
        self._populated = target if rc == 0 else -1

    def release(self, slot: Slot) -> None:
        """Mark ``slot`` free; space is reclaimed once every older slot is free too."""
        slot.done = True
        slot.buf = None
        while self._live and self._live[0].done:
            self._live.popleft()
        if not self._live:
            self._head = 0

    def reset(self) -> None:
        """Forget every slot (after a failure, when nothing pending will be written)."""
        for s in self._live:
            s.done = True
        self._live.clear()
        self._head = 0
