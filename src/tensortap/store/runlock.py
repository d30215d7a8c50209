"""One writer per run: an exclusive lock on the run directory for as long as a capture writes it.

Two captures into one directory would interleave their manifests and overwrite each
other's shards; a second capture with ``overwrite`` would delete a run that is still
being written. The writer therefore holds ``flock(LOCK_EX)`` on ``RUN/.writer.lock`` for
its whole session. The kernel releases the lock when the process dies (even by
SIGKILL), so a lock file nobody holds is a stale one: its pid (written inside) is
reported, and the next writer takes it over.

Taking the lock never blocks: a second writer gets one clear error naming the pid.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from tensortap.errors import ConfigError

LOCK_NAME = ".writer.lock"


class RunLock:
    """The held lock of one run directory; ``release()`` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int, stale_pid: int | None) -> None:
        self.path = path
        self._fd: int | None = fd
        self.stale_pid = stale_pid
        """The pid a stale lock file named (a writer that died), when one was taken over."""

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        data = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(data) if data.isdigit() else None
    except (OSError, ValueError):
        return None


def _holder(run_dir: Path) -> int | None:
    """The pid recorded in a lock file (whoever holds it, or last held it)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)


def _busy(run_dir: Path, pid: int | None) -> ConfigError:
    who = f"process {pid}" if pid else "another process"
    return ConfigError(f"{run_dir}: a capture by {who} is writing this run; a run has one writer: "
                       "wait for it to finish, or choose another output directory")


def acquire(run_dir: Path) -> RunLock:
    """Take the writer lock of ``run_dir`` (which must exist), or raise ConfigError."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot create the writer lock ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = _read_pid(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _busy(Path(run_dir), pid) from None
        raise ConfigError(f"{run_dir}: cannot lock the run ({e.strerror or e})") from None
    previous = _read_pid(fd)
    stale = previous if previous and previous != os.getpid() else None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return RunLock(path, fd, stale)


def writer_alive(run_dir: Path) -> int | None:
    """The pid of a live writer of ``run_dir``, or None when nobody holds its lock."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_written(run_dir: Path) -> None:
    """Raise ConfigError when a live process is writing ``run_dir`` (before replacing it)."""
    pid = writer_alive(run_dir)
    if pid is not None:
        raise ConfigError(f"{run_dir}: refusing to overwrite a run that process {pid if pid > 0 else '?'} "
                          "is still writing; a run has one writer")
