"""The background writer: a bounded hand-off from hooks to disk.

Hooks copy a tensor (alias safety) and submit it; this thread computes statistics and
checksums, batches many records into one shard, and commits on a timer
(``flush_interval``), when a batch reaches ``shard_bytes``, and on flush/close. Copies
not yet on disk are bounded by ``pending_bytes``: when the budget is full, a submit
waits (``on_full="block"``) or is dropped and counted (``"drop"``).

An error here (disk full, an unstorable value) never propagates to the observed
program: the pipeline records it, drops what is pending, and refuses further work.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from typing import Any

import torch

from tensortap.store.sketch import sketch
from tensortap.store.stats import checksum, tensor_stats
from tensortap.store.writer import RankWriter


def describe_write_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
        return "disk full"
    if isinstance(e, OSError) and e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return f"write failed: {type(e).__name__}: {e}"


class WriterPipeline:
    """Owns a RankWriter and a thread that feeds it."""

    def __init__(
        self,
        writer: RankWriter,
        flush_interval: float = 1.0,
        shard_bytes: int = 256 * 2**20,
        pending_budget: int = 2**30,
        on_full: str = "block",
        with_sketch: bool = False,
    ) -> None:
        self.writer = writer
        self.flush_interval = flush_interval
        self.shard_bytes = shard_bytes
        self.pending_budget = pending_budget
        self.on_full = on_full
        self.with_sketch = with_sketch
        self.error: str | None = None
        self.pending = 0
        self.peak_pending = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._flush_requested = 0
        self._flush_done = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="tensortap-writer", daemon=True)
        self._thread.start()

    # -- producer side (hook threads) ---------------------------------------------
    def submit(self, rec: dict[str, Any], tensor: torch.Tensor | None, store: bool, nbytes: int = 0) -> bool:
        """Hand one record over. Returns False when it was dropped (budget full or failed)."""
        with self._cv:
            if self.error is not None or self._closing:
                return False
            if nbytes and self.pending and self.pending + nbytes > self.pending_budget:
                if self.on_full == "drop":
                    self.dropped += 1
                    self.dropped_bytes += nbytes
                    return False
                while (self.pending and self.pending + nbytes > self.pending_budget
                       and self.error is None):
                    self._cv.wait(0.5)
                if self.error is not None:
                    return False
            self.pending += nbytes
            self.peak_pending = max(self.peak_pending, self.pending)
            self._queue.append(("rec", rec, tensor, store, nbytes))
            self._cv.notify_all()
        return True

    def submit_tokens(self, entry: dict[str, Any]) -> None:
        with self._cv:
            if self.error is None and not self._closing:
                self._queue.append(("tokens", entry, None, False, 0))
                self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is committed (or the pipeline failed)."""
        with self._cv:
            self._flush_requested += 1
            target = self._flush_requested
            self._cv.notify_all()
            return self._cv.wait_for(
                lambda: self._flush_done >= target or self.error is not None or not self._thread.is_alive(),
                timeout,
            )

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        try:
            self.writer.close()
        except OSError as e:
            self._set_error(e)

    # -- consumer side (writer thread) ---------------------------------------------
    def _set_error(self, e: BaseException) -> None:
        with self._cv:
            if self.error is None:
                self.error = describe_write_error(e)
            self._queue.clear()
            self.pending = 0
            self._cv.notify_all()

    def _run(self) -> None:
        batch: list[tuple[dict, torch.Tensor | None]] = []
        batch_bytes = 0
        batch_started = 0.0
        while True:
            with self._cv:
                while not self._queue and not self._closing and self._flush_requested == self._flush_done:
                    timeout = None
                    if batch:
                        timeout = max(0.0, batch_started + self.flush_interval - time.monotonic())
                        if timeout == 0.0:
                            break
                    self._cv.wait(timeout)
                items = list(self._queue)
                self._queue.clear()
                flush_target = self._flush_requested
                closing = self._closing
            try:
                freed = 0
                for kind, rec, tensor, store, nbytes in items:
                    if kind == "tokens":
                        self.writer.append_tokens(rec)
                        continue
                    if tensor is not None:
                        rec["stats"] = tensor_stats(tensor).to_json()
                        if store:
                            rec["checksum"] = checksum(tensor)
                        elif self.with_sketch:
                            rec["sketch"] = list(sketch(tensor))
                    if not batch:
                        batch_started = time.monotonic()
                    batch.append((rec, tensor if store else None))
                    if store:
                        batch_bytes += nbytes
                    else:
                        freed += nbytes
                if freed:
                    with self._cv:
                        self.pending = max(0, self.pending - freed)
                        self._cv.notify_all()
                due = batch and (
                    batch_bytes >= self.shard_bytes
                    or time.monotonic() >= batch_started + self.flush_interval
                    or flush_target > self._flush_done or closing
                )
                if due:
                    self.writer.commit(batch)
                    batch, committed, batch_bytes = [], batch_bytes, 0
                    with self._cv:
                        self.pending = max(0, self.pending - committed)
                        self._cv.notify_all()
            except BaseException as e:  # noqa: BLE001 - the observed program must survive
                batch, batch_bytes = [], 0
                self._set_error(e)
            with self._cv:
                if not batch and not self._queue:
                    self._flush_done = max(self._flush_done, flush_target)
                    self._cv.notify_all()
                if closing and not self._queue and not batch:
                    return
                if self.error is not None:
                    self._flush_done = self._flush_requested
                    self._cv.notify_all()
                    if closing:
                        return
