"""Writes one rank's records: safetensors shards, then manifest lines that point at them.

Durability order (the crash contract, docs/reliability.md): a shard is written under a
temporary name, fsynced and renamed into place; only then are its manifest lines
appended and fsynced. A reader therefore never sees a manifest line whose shard is
missing, unless the disk itself lies.

A commit that fails (disk full, a path taken) is rolled back: the temporary shard is
removed, and if the manifest append failed part-way the manifest is cut back to its
previous length and the new shard removed. The run stays consistent, and the space
freed lets the session still write its final "incomplete: disk full" status.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from tensortap.store import format as fmt
from tensortap.store.jsonio import atomic_write_json, fsync_dir
from tensortap.store.directio import DirectUnsupported, direct_supported
from tensortap.store.shardio import write_shard


@dataclass
class StagedCommit:
    """A shard written under its temporary name, with the manifest lines that will follow it."""

    lines: bytes
    records: int
    tmp: Path | None = None
    final: Path | None = None
    nbytes: int = 0


class RankWriter:
    """Appends committed batches of records to ``RUN/rank-<r>/``.

    Not thread-safe: one writer thread owns it.
    """

    def __init__(self, root: Path, rank: int, durable: bool = True, direct: bool = True) -> None:
        self.root = Path(root)
        self.rank = rank
        self.dir = fmt.rank_dir(self.root, rank)
        self.data_dir = self.dir / fmt.DATA_DIR
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        # Shards are written once and not read back by the capture: caching them costs the
        # kernel copy (and fresh page-cache pages) for nothing (store/directio.py).
        self.direct = direct and direct_supported()
        self.direct_refused: str | None = None
        """Why direct writes were given up for this run (the filesystem refused them)."""
        self._next_shard = self._first_free_shard()
        mpath = self.dir / fmt.MANIFEST
        _drop_torn_tail(mpath)
        # Unbuffered: each commit is one explicit write loop whose failure can be undone.
        self._manifest = open(mpath, "ab", buffering=0)
        self._tokens = None
        self.bytes_written = 0
        self.records_written = 0

    def _first_free_shard(self) -> int:
        taken = [int(p.name[len(fmt.SHARD_PREFIX):-len(fmt.SHARD_SUFFIX)])
                 for p in self.data_dir.iterdir() if fmt.is_valid_shard_name(p.name)]
        return max(taken, default=0) + 1

    def commit(self, entries: Iterable[tuple[dict[str, Any], torch.Tensor | None]]) -> int:
        """Write the tensors of ``entries`` into one new shard, then their manifest lines.

        Each entry is ``(record_json, tensor_or_None)``; ``record_json`` gets its
        ``shard``/``tensor`` fields filled in here. Returns the bytes of tensor data written.
        """
        staged = self.stage(entries)
        return 0 if staged is None else self.publish(staged)

    def stage(self, entries: Iterable[tuple[dict[str, Any], torch.Tensor | None]],
              ready: Callable[[], None] | None = None) -> StagedCommit | None:
        """First half of ``commit``: the shard written under its temporary name.

        Nothing is visible or durable yet. The caller may release the tensors' memory
        afterwards, and must pass the result to ``publish`` (or ``discard``), in order:
        the pipeline stages the next shard while an older one is being fsynced.

        ``ready``, if given, is called after the tensor data is written and before the
        records are encoded: the pipeline writes a large tensor while its statistics are
        still being computed, and ``ready`` waits for them (raising aborts the commit).
        """
        entries = list(entries)
        if not entries:
            return None
        tensors: dict[str, torch.Tensor] = {}
        shard = None
        for rec, t in entries:
            # A record of a tensor already stored unchanged (the capture pipeline's
            # de-duplication) points at that record's shard tensor: earlier in this loop,
            # or in an earlier, already published shard.
            same = rec.pop("_same_as", None)
            if same is not None and "shard" in same:
                rec["shard"], rec["tensor"] = same["shard"], same["tensor"]
            if t is None:
                continue
            if shard is None:
                shard = fmt.shard_name(self._next_shard)
            name = f"r{rec['seq']}"
            tensors[name] = t
            rec["shard"] = shard
            rec["tensor"] = name
        # Encoded before anything touches the disk where possible: a record that is not
        # valid JSON then fails the commit without leaving a shard behind.
        staged = StagedCommit(b"" if ready else _encode(entries), len(entries))
        if tensors:
            staged.final = self.data_dir / shard
            staged.tmp = self.data_dir / f".{shard}.tmp"
        try:
            if tensors:
                self._write_shard(staged.tmp, tensors)
            if ready is not None:
                ready()
                staged.lines = _encode(entries)
        except BaseException:
            if staged.tmp is not None:
                _unlink_quietly(staged.tmp)
            raise
        if tensors:
            self._next_shard += 1
            staged.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return staged

    def _write_shard(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        if self.direct:
            try:
                write_shard(path, tensors, direct=True)
                return
            except DirectUnsupported as e:
                # Decided once per run: the filesystem will refuse every shard alike.
                self.direct = False
                self.direct_refused = str(e)
        write_shard(path, tensors)

    def publish(self, staged: StagedCommit) -> int:
        """Second half of ``commit``: fsync and rename the shard, then append its manifest lines."""
        if staged.tmp is not None:
            try:
                if self.durable:
                    with open(staged.tmp, "rb+") as f:
                        os.fsync(f.fileno())
                os.replace(staged.tmp, staged.final)
            except BaseException:
                _unlink_quietly(staged.tmp)
                raise
            if self.durable:
                fsync_dir(self.data_dir)
        self._append_manifest(staged.lines, staged.final)
        self.bytes_written += staged.nbytes
        self.records_written += staged.records
        return staged.nbytes

    @staticmethod
    def discard(staged: StagedCommit) -> None:
        """Remove a staged shard that will never be published (the pipeline failed)."""
        if staged.tmp is not None:
            _unlink_quietly(staged.tmp)

    def _append_manifest(self, lines: bytes, shard: Path | None) -> None:
        """Append whole lines and fsync; on failure undo the append and drop ``shard``."""
        f = self._manifest
        start = os.fstat(f.fileno()).st_size
        try:
            view = memoryview(lines)
            while view:
                n = f.write(view)  # a raw file may write only part (e.g. near a full disk)
                if not n:
                    raise OSError(errno.EIO, "manifest write made no progress")
                view = view[n:]
            if self.durable:
                os.fsync(f.fileno())
        except BaseException:
            try:
                os.ftruncate(f.fileno(), start)
            except OSError:
                pass  # a torn tail is still ignored by readers
            if shard is not None:
                _unlink_quietly(shard)
            raise

    def append_tokens(self, entry: dict[str, Any]) -> None:
        """Append one step's token table (one JSON line)."""
        if self._tokens is None:
            self._tokens = open(self.dir / fmt.TOKENS, "ab")
        self._tokens.write((json.dumps(entry, separators=(",", ":")) + "\n").encode())
        self._tokens.flush()

    def write_status(self, status: dict[str, Any]) -> None:
        atomic_write_json(self.dir / fmt.RANK_STATUS, status, durable=self.durable)

    def close(self) -> None:
        for f in (self._manifest, self._tokens):
            if f is not None:
                try:
                    f.flush()
                    if self.durable:
                        os.fsync(f.fileno())
                except OSError:
                    pass
                f.close()
        self._tokens = None


PRE_ENCODED = "_line"
"""A record may carry its finished manifest line under this key (see ``encode_line``)."""


def encode_line(rec: dict[str, Any]) -> bytes:
    """The manifest line of a finished record.

    The capture pipeline encodes records without data as soon as they are summarised
    (stored as ``rec[PRE_ENCODED]``): a stats-mode step has hundreds of records with
    sketches, and encoding them all at the flush cost 12 ms after the model had finished.
    """
    return (json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _encode(entries: list[tuple[dict[str, Any], torch.Tensor | None]]) -> bytes:
    lines = []
    for rec, _ in entries:
        line = rec.pop(PRE_ENCODED, None)
        lines.append(line if line is not None else encode_line(rec))
    return b"".join(lines)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a crash mid-append) before appending after it.

    Otherwise the next line would be glued onto the fragment and both would be lost.
    """
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = 0
            pos = size
            while pos > 0 and not keep:  # find the last newline, reading backwards
                step = min(65536, pos)
                pos -= step
                f.seek(pos)
                i = f.read(step).rfind(b"\n")
                if i >= 0:
                    keep = pos + i + 1
            f.truncate(keep)
    except FileNotFoundError:
        pass
