"""Writes one rank's records: safetensors shards, then manifest lines that point at them.

Durability order (the crash contract, docs/reliability.md): a shard is written under a
temporary name, fsynced and renamed into place; only then are its manifest lines
appended and fsynced. A reader therefore never sees a manifest line whose shard is
missing, unless the disk itself lies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import save_file

from tensortap.store import format as fmt
from tensortap.store.jsonio import atomic_write_json, fsync_dir


class RankWriter:
    """Appends committed batches of records to ``RUN/rank-<r>/``.

    Not thread-safe: one writer thread owns it.
    """

    def __init__(self, root: Path, rank: int, durable: bool = True) -> None:
        self.root = Path(root)
        self.rank = rank
        self.dir = fmt.rank_dir(self.root, rank)
        self.data_dir = self.dir / fmt.DATA_DIR
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._next_shard = self._first_free_shard()
        self._manifest = open(self.dir / fmt.MANIFEST, "ab")
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
        entries = list(entries)
        if not entries:
            return 0
        tensors: dict[str, torch.Tensor] = {}
        shard = None
        for rec, t in entries:
            if t is None:
                continue
            if shard is None:
                shard = fmt.shard_name(self._next_shard)
            name = f"r{rec['seq']}"
            tensors[name] = t
            rec["shard"] = shard
            rec["tensor"] = name
        nbytes = 0
        if tensors:
            final = self.data_dir / shard
            tmp = self.data_dir / f".{shard}.tmp"
            save_file(tensors, str(tmp))
            if self.durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if self.durable:
                fsync_dir(self.data_dir)
            self._next_shard += 1
            nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        lines = b"".join(
            (json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode()
            for rec, _ in entries
        )
        self._manifest.write(lines)
        self._manifest.flush()
        if self.durable:
            os.fsync(self._manifest.fileno())
        self.bytes_written += nbytes
        self.records_written += len(entries)
        return nbytes

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
