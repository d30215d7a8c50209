"""Loading tensors for a diff with bounded memory: about one pair at a time.

``Run`` keeps each shard's safetensors handle open (an mmap). Pages a load touched stay
mapped, so after reading every record of a run the process would map all its shards.
The loader drops a run's handles when it moves to another shard and after every
``RELEASE_BYTES`` read (a loaded tensor keeps its own reference to the mapping, so it survives;
the pages are unmapped when the last such tensor is freed), and it counts the bytes of tensors
held at once so the bound can be checked (``DiffReport.peak_loaded_bytes``).
"""

from __future__ import annotations

import torch

from tensortap.compare.mapping import Item
from tensortap.store.reader import Run

RELEASE_BYTES = 16 * 2**20


class TensorLoader:
    def __init__(self, release_bytes: int = RELEASE_BYTES) -> None:
        self.release_bytes = release_bytes
        self._last_shard: dict[int, tuple[int, str | None]] = {}
        self._mapped: dict[int, int] = {}
        self.held = 0
        self.peak = 0

    def load(self, run: Run, item: Item) -> torch.Tensor:
        """The item's tensor (raises CorruptRecordError/RunFormatError on bad data)."""
        if item.loader is not None:
            t = item.loader()
        else:
            rec = item.record
            where = (rec.rank, rec.shard)
            last = self._last_shard.get(id(run))
            if last is not None and last != where:
                self._drop(run)
            self._last_shard[id(run)] = where
            t = run.load(rec)
            # Pages read through the mapping stay resident while it is open: re-open the
            # shard after every RELEASE_BYTES read (one header parse per 16 MiB of data).
            self._mapped[id(run)] = self._mapped.get(id(run), 0) + t.nbytes
            if self._mapped[id(run)] >= self.release_bytes:
                self._drop(run)
        self.held += t.nbytes
        self.peak = max(self.peak, self.held)
        return t

    def _drop(self, run: Run) -> None:
        run.close()
        self._last_shard.pop(id(run), None)
        self._mapped.pop(id(run), None)

    def release(self, *tensors: torch.Tensor | None) -> None:
        """Forget tensors the caller has dropped (for the held-bytes count)."""
        for t in tensors:
            if t is not None:
                self.held = max(0, self.held - t.nbytes)

    def close(self, *runs: Run) -> None:
        for r in runs:
            self._drop(r)
