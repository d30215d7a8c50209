"""Reading the file ranges a consumer will need next, on a thread, into the page cache.

A diff reads its tensors through memory maps, one pair after the other: each page it
touches first is a wait for the disk, and while it waits it computes nothing. Measured on
the benchmark VM (two 1 GiB runs, page cache dropped): 1.65 s with the files cached,
3.4-4.3 s from disk, the reads and the metrics one after the other. This thread reads the
same bytes a little ahead, so the disk and the metrics overlap.

``posix_fadvise(WILLNEED)`` would ask the kernel for the same without a copy, but the
benchmark VM's kernel ignored it (a diff after advising every shard ran as cold as
before); reading the ranges with ``pread`` into a small reused buffer works everywhere
and costs a memory copy (~0.1 s of another core per GiB).

The reader stays at most ``window`` bytes ahead of the consumer, so it never evicts pages
the consumer has yet to read. Errors are ignored: the consumer's own read reports them.
"""

from __future__ import annotations

import os
import threading
from itertools import accumulate
from pathlib import Path
from typing import Sequence

WINDOW = 256 * 2**20
"""How far ahead of the consumer the reader may be, in bytes."""

_CHUNK = 8 * 2**20

Range = tuple[Path, int, int]
"""``(file, offset, length)``."""


class ReadAhead:
    """Reads ``groups[i]`` (ranges the consumer needs at its step ``i``) ahead of it.

    Call ``reached(i)`` when the consumer starts step ``i``, and ``close()`` when done.
    """

    def __init__(self, groups: Sequence[Sequence[Range]], window: int = WINDOW) -> None:
        self._groups = groups
        self._cum = list(accumulate((sum(n for _, _, n in g) for g in groups), initial=0))
        """Bytes of the groups before each index."""
        self._window = window
        self._cv = threading.Condition()
        self._reached = 0
        self._closed = False
        self.bytes_read = 0
        self._thread: threading.Thread | None = None
        if self._cum[-1]:
            self._thread = threading.Thread(target=self._run, name="tensortap-readahead", daemon=True)
            self._thread.start()

    def reached(self, index: int) -> None:
        with self._cv:
            if index > self._reached:
                self._reached = index
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        buf = bytearray(_CHUNK)
        fds: dict[Path, int] = {}
        cum = self._cum
        try:
            for i, group in enumerate(self._groups):
                with self._cv:
                    # Wait while reading group i would put more than the window between
                    # the consumer and the end of what has been read (one group always fits).
                    while (not self._closed and i > self._reached
                           and cum[i + 1] - cum[self._reached] > self._window):
                        self._cv.wait()
                    if self._closed:
                        return
                    if i < self._reached:
                        continue  # the consumer is past it already
                for path, offset, length in group:
                    self._read(fds, path, offset, length, buf)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _read(self, fds: dict[Path, int], path: Path, offset: int, length: int, buf: bytearray) -> None:
        fd = fds.get(path)
        if fd is None:
            try:
                fd = fds[path] = os.open(path, os.O_RDONLY)
            except OSError:
                return
        view = memoryview(buf)
        end = offset + length
        while offset < end and not self._closed:
            try:
                got = os.preadv(fd, [view[:min(_CHUNK, end - offset)]], offset)
            except OSError:
                return
            if got <= 0:
                return
            offset += got
            self.bytes_read += got
