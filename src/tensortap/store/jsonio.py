"""Small durable-file helpers used by the writer and by run.json updates."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary name in the same folder, then rename into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A half-written temporary file (disk full) would only hold on to space.
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), durable)


def read_json_file(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


RESERVE_NAME = ".reserve"
RESERVE_BYTES = 256 * 1024


def reserve_space(folder: Path, nbytes: int = RESERVE_BYTES) -> Path | None:
    """Hold ``nbytes`` of real disk blocks in ``folder`` so the final status files can still
    be written after the disk fills up (release_space frees them first). Best effort."""
    path = Path(folder) / RESERVE_NAME
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * nbytes)  # written, not truncated: sparse files reserve nothing
            f.flush()
            os.fsync(f.fileno())
        return path
    except OSError:
        try:
            path.unlink()
        except OSError:
            pass
        return None


def release_space(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.unlink()
    except OSError:
        pass
