"""Sequential file writes that bypass the page cache (``O_DIRECT``), for capture shards.

Why: a shard is written once and not read back by the capture (a durable one is fsynced
right after), so the page cache buys nothing, and a buffered ``write()`` costs a kernel
copy into freshly allocated cache pages, on the model's CPU, plus the writeback. On the
benchmark machine (a VM) writing
74 MiB buffered took 23 ms of CPU when the kernel had recently freed pages to hand out and
up to 190 ms when it had to take fresh ones (a capture keeps its files, so it always
does), then 45 ms in fsync; the same bytes through ``O_DIRECT`` took 12 ms of CPU (the copy
into the staging buffer) and the fsync found nothing left to write (bench/NOTES.md).
Large dumps also stop evicting the rest of the machine's page cache and stop being
throttled as dirty memory.

``O_DIRECT`` needs the buffer address, the file offset and the length aligned to the
device's logical block size. The bytes are therefore gathered into a reused, page-aligned
staging buffer and written in whole blocks; the last block is padded and the file cut back
to its exact size. A filesystem that refuses ``O_DIRECT`` (tmpfs on older kernels, some
network and FUSE filesystems) raises :class:`DirectUnsupported` so the caller can write
the same bytes buffered instead.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

import torch

BLOCK = 4096
"""Alignment of every direct write: a multiple of every common logical block size (512, 4096)."""

STAGE_BYTES = 8 * 2**20
"""Staging buffer per writing thread: large enough that a write costs few syscalls,
small enough to stay in the machine's caches between the copy and the write."""

ZERO_COPY_MIN = 16 * BLOCK
"""Aligned tensors at least this large are written from their own memory, not staged."""

GATHER_BYTES = 16 * 2**20
"""Pieces are written together once this many bytes are pending (larger writes are faster)."""

_MAX_IOV = 512
"""Pieces per ``writev`` at most (Linux allows 1024)."""

_MAX_POOLED = 2


class DirectUnsupported(OSError):
    """The filesystem refused an ``O_DIRECT`` open or write; nothing usable was written."""


class _StagePool:
    """Staging buffers kept across shards and sessions: fresh memory is page-faulted on
    first touch (slow on virtual machines), a reused buffer is already resident."""

    def __init__(self) -> None:
        self._free: list[tuple[mmap.mmap, torch.Tensor]] = []
        self._lock = threading.Lock()

    def get(self) -> tuple[mmap.mmap, torch.Tensor]:
        with self._lock:
            if self._free:
                return self._free.pop()
        mm = mmap.mmap(-1, STAGE_BYTES)  # anonymous mappings are page-aligned
        return mm, torch.frombuffer(mm, dtype=torch.uint8)

    def put(self, buf: tuple[mmap.mmap, torch.Tensor]) -> None:
        with self._lock:
            if len(self._free) < _MAX_POOLED:
                self._free.append(buf)


_pool = _StagePool()


def direct_supported() -> bool:
    """Whether this platform has ``O_DIRECT`` at all (Linux does; macOS and Windows do not)."""
    return hasattr(os, "O_DIRECT")


def open_direct(path: str | os.PathLike) -> int:
    """Create/truncate ``path`` for direct writing; :class:`DirectUnsupported` if refused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0)
    if not direct_supported():
        raise DirectUnsupported(errno.EINVAL, "O_DIRECT is not available on this platform")
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            raise DirectUnsupported(e.errno, f"O_DIRECT refused for {path}: {e.strerror}") from e
        raise


class DirectWriter:
    """Appends bytes to an ``O_DIRECT`` file descriptor, in large gathered writes.

    ``write`` takes flat uint8 tensors. One that is block-aligned in memory, where the
    file position is block-aligned too, is written from where it lies (the capture ring
    page-aligns large copies, and the header is padded to a block); the rest is copied
    into an aligned staging buffer (the copy runs without the GIL, unlike a memoryview
    assignment). Pending pieces go out together in one ``writev`` of up to
    ``GATHER_BYTES``: on the benchmark VM the disk took 1.5 GB/s in 1.3 MiB writes and
    1.9 GB/s in 8 MiB ones. The tensors passed in must stay alive until ``finish``.

    ``finish`` writes the padded tail and cuts the file to the bytes written; ``release``
    returns the buffer to the pool. Neither closes ``fd``.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = _pool.get()
        self._stage = self._buf[1]
        self._fill = 0
        self._gather: list[memoryview] = []
        self._gathered = 0
        self.size = 0

    def write(self, data: torch.Tensor) -> None:
        pos, n = 0, data.numel()
        if n >= ZERO_COPY_MIN and self._fill % BLOCK == 0 and data.data_ptr() % BLOCK == 0:
            if self._fill:
                self._flush(self._fill)  # staged bytes come first in the file
            pos = n - n % BLOCK
            self._gather.append(memoryview(data[:pos].numpy()))
            self._gathered += pos
            if self._gathered >= GATHER_BYTES or len(self._gather) >= _MAX_IOV:
                self._flush(0)
        while pos < n:
            take = min(n - pos, STAGE_BYTES - self._fill)
            self._stage[self._fill:self._fill + take].copy_(data[pos:pos + take])
            self._fill += take
            pos += take
            if self._fill == STAGE_BYTES:
                self._flush(STAGE_BYTES)
        self.size += n

    def finish(self) -> None:
        """Write what is pending, the tail padded to a block, and cut the file back to the
        bytes written."""
        padded = -(-self._fill // BLOCK) * BLOCK
        self._stage[self._fill:padded].zero_()
        self._flush(padded)
        os.ftruncate(self.fd, self.size)

    def release(self) -> None:
        """Give the staging buffer back (after ``finish``, or instead of it on an error)."""
        self._gather.clear()
        buf, self._buf = self._buf, None
        if buf is not None:
            _pool.put(buf)

    def _flush(self, staged: int) -> None:
        """Write the gathered pieces, then the first ``staged`` bytes of the staging buffer."""
        views = self._gather
        stage_view = memoryview(self._buf[0])[:staged] if staged else None
        if stage_view is not None:
            views.append(stage_view)
        try:
            if views:
                self._writev(views)
        finally:
            if stage_view is not None:
                stage_view.release()
            self._gather = []
            self._gathered = 0
            self._fill = 0

    def _writev(self, views: list[memoryview]) -> None:
        try:
            while views:
                n = os.writev(self.fd, views)
                if n <= 0:
                    raise OSError(errno.EIO, "direct write made no progress")
                # A short write (the disk filling up) may end unaligned; the next write
                # then fails with EINVAL, and the caller's buffered retry reports the
                # real error.
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views = views[1:]
                if n:
                    views = [views[0][n:], *views[1:]]
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise DirectUnsupported(e.errno, f"O_DIRECT write refused: {e.strerror}") from e
            raise
