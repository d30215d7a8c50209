"""The background writer: a bounded hand-off from hooks to disk.

Three stages, each on its own thread, so copying, computing and waiting for the disk
overlap (the model keeps running while earlier records are summarised and written):

1. the hook (the model's thread) reserves room in the pending-bytes budget and copies the
   tensor there (alias safety): ``submit_tensor``; a record that stores no data (stats
   mode) is summarised right there instead when the compiled kernels are loaded
   (``_summarise_now``), which costs the hook about what the copy would;
2. the writer thread computes float64 statistics, the CRC32 and (stats mode) the sketch,
   and groups records into batches: ``_loop``;
3. the disk thread writes each batch as one safetensors shard under a temporary name,
   frees its copies, fsyncs, renames, and appends the manifest lines: ``_disk_loop``.

Commits happen on a timer (``flush_interval``, the crash-loss window), when a batch
reaches its size limit, early when the disk is idle (``COMMIT_BYTES``), and on
flush/close. Copies not yet on disk are bounded by ``pending_bytes``: when the budget is
full, a hook waits (``on_full="block"``) or its record is dropped and counted
(``"drop"``). The budget is reserved *before* the copy is made, so a dropped record costs
no copy and memory never exceeds the budget (one record larger than the whole budget is
let through alone, when nothing else is pending).

CPU tensors are copied into a ring of host memory the size of the budget
(``hostbuf.HostRing``); CUDA tensors are cloned on their stream and copied to pinned
host memory on a side stream (``cudacopy.CudaCopier``), with no device synchronisation in the
hook: the writer waits on the copy's event.

An error here (disk full, an unstorable value) never propagates to the observed
program: the pipeline records it, drops what is pending, and refuses further work.
"""
from __future__ import annotations

import ctypes
import errno
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from tensortap.capture.assist import AssistBoard, Task
from tensortap.capture.cudacopy import CudaCopier
from tensortap.capture.helper import SPLIT_MIN_BYTES, StatsHelper
from tensortap.capture.hostbuf import HostRing, Slot
from tensortap.store.sketch import CountSketch, encode_sketch, finished
from tensortap.store.record import TensorStats
from tensortap.store.stats import StatSums, checksum, kernel_reads, stat_sums, stats_from_sums, tensor_stats
from tensortap.store.writer import PRE_ENCODED, RankWriter, encode_line

COMMIT_BYTES = 32 * 2**20
"""A batch is committed early, once it holds this much data, if no older shard is still
waiting for its fsync: disk I/O then starts while the model runs instead of all at flush.
While the disk is busy, batches grow up to ``shard_bytes`` (or half the budget), so a
sustained stream pays few fsyncs. Measured in bench/RESULTS.md."""


EARLY_BYTES = 4 * 2**20
"""A stored tensor at least this large goes to the disk thread before its statistics are
computed, so writing it overlaps summarising it. Large tensors are where this pays: the
logits, typically the last record of a step, used to be summarised and only then written,
all of it after the model had finished (the flush tail)."""

SPLIT_BYTES = 4 * 2**20
"""A tensor at least this large is summarised by two threads when a ``flush()`` is waiting:
the waiting thread (the model's, idle until the flush returns) takes half of what is left."""

SPLIT_CHUNK_BYTES = 2 * 2**20
"""How often (in bytes summarised) the writer looks for a waiting thread to share with."""

LAZY_RECORDS = 32
"""Records with nothing left to compute that may queue before the writer is woken early
(it otherwise takes them on its commit timer, or at a flush). Woken every few dozen
records, the writer encodes their manifest lines while the model runs: left for the
flush, the encoding of a step's ~180 lines was 3 of its ~4.5 ms tail (stats mode)."""

MAX_HANDED = 2
"""Batches handed to the disk thread and not yet published, at most."""

_STOP = object()
_MAX_SEEN = 1 << 16


def _one_intra_op_thread() -> None:
    """Run the calling thread's torch ops on one core, leaving the others to the model.

    ``torch.set_num_threads`` would change the process-wide default (and every thread
    created later); OpenMP's own setting is per thread. torch applies its default to a
    thread on first use, so that is triggered first. Without OpenMP this does nothing.
    """
    try:
        torch.get_num_threads()
        ctypes.CDLL(None).omp_set_num_threads(1)
    except (AttributeError, OSError, TypeError):
        pass


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for a CPU destination of the same dtype and shape.

    A plain contiguous source is copied with libc's ``memmove`` (GIL released): for large
    tensors it uses non-temporal stores, about twice as fast as torch's copy loop for the
    logits (2.5 against 4.6 ms for 31 MiB on the benchmark machine), the same below that.
    """
    if (src.device.type == "cpu" and src.is_contiguous() and src.layout == torch.strided
            and not src.is_conj() and not src.is_neg() and src.dtype == dst.dtype):
        ctypes.memmove(dst.data_ptr(), src.data_ptr(), src.numel() * src.element_size())
    else:
        dst.copy_(src.detach())


class SummaryFailed(Exception):
    """Computing a record's statistics or checksum failed (not its writing)."""


def describe_write_error(e: BaseException) -> str:
    if isinstance(e, SummaryFailed):
        return str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
        return "disk full"
    if isinstance(e, OSError) and e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return f"write failed: {type(e).__name__}: {e}"


@dataclass
class _Item:
    """One queued record (or token table) and what its copy holds."""

    rec: dict[str, Any]
    tensor: torch.Tensor | None = None
    store: bool = False
    nbytes: int = 0
    slot: Slot | None = None
    event: Any = None
    """A CUDA event the copy completes at (None for CPU copies)."""
    tokens: bool = False
    same_as: _Item | None = None
    """An earlier record of the very same, unchanged tensor, whose copy this one shares."""
    ready: bool = True
    """False while a record handed to the disk early still waits for its statistics."""


def _goes_early(it: _Item) -> bool:
    """Whether the record's data goes to the disk before its statistics (EARLY_BYTES)."""
    return it.store and it.same_as is None and it.nbytes >= EARLY_BYTES


@dataclass
class _Seen:
    """A tensor already copied this step: the copy is reused while the tensor is unchanged."""

    ref: weakref.ref
    version: int
    item: _Item


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
        # Half the budget at most: the hooks can fill the other half while a batch commits.
        self.max_batch = max(1, min(shard_bytes, pending_budget // 2))
        self.commit_bytes = min(COMMIT_BYTES, self.max_batch)
        self.on_full = on_full
        self.with_sketch = with_sketch
        self.error: str | None = None
        self.pending = 0
        self.peak_pending = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self._ring = HostRing(pending_budget)
        self._cuda: CudaCopier | None = None
        self._helper: StatsHelper | None = None
        """Threads sharing the read of a large tensor summarised in the hook; started at
        the first such tensor (a full capture never needs them)."""
        self._helper_tried = False
        self._seen: dict[int, _Seen] = {}
        """Tensors copied this step, by ``id``: a module's input is often the previous one's
        output, the very same tensor; it is copied once (45 % of the benchmark's bytes)."""
        self._queue: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._flush_requested = 0
        self._flush_done = 0
        self._waiting = 0
        """Hooks blocked on the budget: the writer commits at once rather than on its timer."""
        self._writer_asleep = False
        """The writer thread waits for work: an enqueue must wake it."""
        self._writer_timed = False
        """The writer sleeps on a timer (it holds a batch, due within ``flush_interval``)."""
        self._board = AssistBoard(self._cv)
        """Statistics offered to threads waiting in ``flush()`` (capture/assist.py)."""
        self._closing = False
        self._disk_queue: deque[Any] = deque()
        """Batches, flush markers (ints) and _STOP, for the disk thread, in order."""
        self._handed = 0
        """Batches in ``_disk_queue`` or being written: the disk is busy while non-zero."""
        self._ring.map()
        self._disk = threading.Thread(target=self._disk_run, name="tensortap-disk", daemon=True)
        self._disk.start()
        self._thread = threading.Thread(target=self._run, name="tensortap-writer", daemon=True)
        self._thread.start()

    # -- producer side (hook threads) ---------------------------------------------
    def submit_tensor(self, rec: dict[str, Any], value: torch.Tensor, store: bool) -> bool:
        """Copy ``value`` now (within the budget) and hand the copy over.

        Returns False when the record was dropped (budget full with ``on_full="drop"``)
        or the pipeline has failed; nothing is copied then.
        """
        version = self._version_of(value)
        if version is not None:
            with self._cv:
                seen = self._seen.get(id(value))
            if (seen is not None and seen.ref() is value and seen.version == version
                    and seen.item.store == store):
                item = _Item(rec, store=store, same_as=seen.item)
                return self._enqueue(item)
        if not store and self._summarise_now(rec, value):
            item = _Item(rec, store=False)
            if not self._enqueue(item):
                return False
            self._remember(value, version, item)
            return True
        nbytes = value.numel() * value.element_size()
        on_cuda = value.is_cuda
        slot = self._reserve(nbytes, use_ring=value.device.type == "cpu" and nbytes > 0)
        if slot is False:
            return False
        try:
            event = None
            if isinstance(slot, Slot):
                copy = slot.buf.view(value.dtype).view(value.shape)
                _copy_into(copy, value)
            elif on_cuda:
                if self._cuda is None:
                    self._cuda = CudaCopier()
                copy, event = self._cuda.copy(value)
            else:
                copy = torch.empty(value.shape, dtype=value.dtype, device="cpu")
                copy.copy_(value.detach())
        except BaseException:
            self._unreserve(slot, nbytes)
            raise
        item = _Item(rec, copy, store, nbytes, slot if isinstance(slot, Slot) else None, event)
        if not self._enqueue(item):
            return False
        self._remember(value, version, item)
        return True

    def _remember(self, value: torch.Tensor, version: int | None, item: _Item) -> None:
        """Note the tensor's record for this step: unchanged, it is not summarised again."""
        if version is not None:
            with self._cv:
                if len(self._seen) >= _MAX_SEEN:
                    self._seen.clear()
                self._seen[id(value)] = _Seen(weakref.ref(value), version, item)

    def _summarise_now(self, rec: dict[str, Any], value: torch.Tensor) -> bool:
        """Statistics (and, stats mode, the sketch) of a record without data, in the hook.

        With the compiled kernels, one pass over the tensor costs the hook about what
        copying it would (both are bound by memory), and it leaves the writer nothing to
        compute: less CPU in all, none of it on another core competing with the model,
        and no flush tail. Reading the tensor now is what makes it alias-safe. False (the
        copy path) for CUDA tensors and dtypes the kernels do not read, or on an error
        (the copy path reports that properly).
        """
        if self.error is not None or value.device.type != "cpu" or not kernel_reads(value.dtype):
            return False
        try:
            self._summarise(rec, value, self.with_sketch, self._hook_stats)
        except Exception:  # noqa: BLE001 - the copy path will report what is wrong
            return False
        return True

    def _hook_stats(self, t: torch.Tensor, sk: CountSketch | None) -> TensorStats:
        """``tensor_stats`` in the hook, a large tensor shared with the helper threads."""
        if t.numel() * t.element_size() >= 2 * SPLIT_MIN_BYTES:
            if not self._helper_tried:
                with self._cv:
                    if not self._helper_tried and not self._closing:
                        self._helper = StatsHelper.for_this_machine(_one_intra_op_thread)
                        self._helper_tried = True
            helper = self._helper  # once: close() may clear it meanwhile
            if helper is not None:
                return helper.stats(t, sk)
        return tensor_stats(t, sketch=sk)

    @staticmethod
    def _summarise(rec: dict[str, Any], t: torch.Tensor, sketching: bool,
                   stats_of: Callable[[torch.Tensor, CountSketch | None], TensorStats]) -> None:
        """Set ``rec``'s statistics and, when ``sketching``, its sketch (one pass for both)."""
        sk = CountSketch() if sketching else None
        rec["stats"] = stats_of(t, sk).to_json()
        if sk is not None and (sketch := finished(sk, t)) is not None:
            rec["sketch"] = encode_sketch(sketch)

    def new_step(self) -> None:
        """Forget this step's copies for de-duplication (called at each root forward)."""
        with self._cv:
            self._seen.clear()

    @staticmethod
    def _version_of(value: torch.Tensor) -> int | None:
        """The tensor's version counter (bumped by every in-place change), if it has one.

        Inference tensors keep none, so under ``torch.inference_mode`` nothing is
        de-duplicated: their in-place changes could not be seen.
        """
        if value.is_inference():
            return None
        try:
            return value._version
        except RuntimeError:
            return None

    def submit(self, rec: dict[str, Any], tensor: torch.Tensor | None, store: bool, nbytes: int = 0) -> bool:
        """Hand over a record whose tensor (if any) is already a private copy.

        Returns False when it was dropped (budget full or failed).
        """
        if nbytes and self._reserve(nbytes, use_ring=False) is False:
            return False
        return self._enqueue(_Item(rec, tensor, store, nbytes))

    def _reserve(self, nbytes: int, use_ring: bool) -> Slot | bool:
        """Take ``nbytes`` of the budget: a ring slot, True (budget only), or False (refused)."""
        with self._cv:
            while True:
                if self.error is not None or self._closing:
                    return False
                over = self.pending and self.pending + nbytes > self.pending_budget
                if use_ring:
                    # The ring bounds its own slots; ``over`` covers an oversized record
                    # held outside it, which must stay alone within the budget.
                    slot = None if over else self._ring.alloc(nbytes)
                    if slot is not None:
                        break
                    if self._ring.failed:
                        use_ring = False
                        continue
                    if not self._ring.fits(nbytes) and self.pending == 0:
                        slot = True  # a single oversized record, allocated on its own
                        break
                elif not over:
                    slot = True
                    break
                if self.on_full == "drop":
                    self.dropped += 1
                    self.dropped_bytes += nbytes
                    return False
                self._waiting += 1
                self._cv.notify_all()
                try:
                    self._cv.wait(0.5)
                finally:
                    self._waiting -= 1
            self.pending += nbytes
            self.peak_pending = max(self.peak_pending, self.pending)
            return slot

    def _unreserve(self, slot: Slot | bool, nbytes: int) -> None:
        with self._cv:
            if isinstance(slot, Slot):
                self._ring.release(slot)
            self.pending = max(0, self.pending - nbytes)
            self._cv.notify_all()

    def _enqueue(self, item: _Item) -> bool:
        with self._cv:
            if self.error is not None or self._closing:
                self._release_locked([item])
                return False
            self._queue.append(item)
            if self._writer_asleep and not (self._writer_timed and item.tensor is None
                                            and len(self._queue) < LAZY_RECORDS):
                # Only then: waking every waiter (the disk thread too) on every record
                # cost the model's thread two context switches per record. A record with
                # nothing left to compute (summarised in the hook) waits for the writer's
                # timer, which is armed: its commit stays within flush_interval.
                self._cv.notify_all()
        return True

    def submit_tokens(self, entry: dict[str, Any]) -> None:
        with self._cv:
            if self.error is None and not self._closing:
                self._queue.append(_Item(entry, tokens=True))
                self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is committed (or the pipeline failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._flush_requested += 1
            target = self._flush_requested
            self._board.waiting += 1
            self._cv.notify_all()
            try:
                while not (self._flush_done >= target or self.error is not None
                           or not self._thread.is_alive() or not self._disk.is_alive()):
                    if self._board.serve_one_locked():
                        continue
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cv.wait(left)
                return True
            finally:
                self._board.waiting -= 1

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        self._disk.join(timeout)
        with self._cv:
            helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()
        try:
            self.writer.close()
        except OSError as e:
            self._set_error(e)
        if not self._thread.is_alive():
            with self._cv:
                self._queue.clear()
                # Reused by the next session only if nothing can still read from it.
                self._ring.close(keep=self.error is None and not self._disk.is_alive())

    # -- consumer side (writer thread) ---------------------------------------------
    def _release_locked(self, items: list[_Item]) -> None:
        freed = 0
        for it in items:
            if it.slot is not None:
                self._ring.release(it.slot)
                it.slot = None
            freed += it.nbytes
            it.nbytes = 0
            it.tensor = None
        if freed:
            self.pending = max(0, self.pending - freed)
            self._cv.notify_all()

    def _release(self, items: list[_Item]) -> None:
        with self._cv:
            self._release_locked(items)

    def _set_error(self, e: BaseException | str) -> None:
        with self._cv:
            if self.error is None:
                self.error = e if isinstance(e, str) else describe_write_error(e)
            self._queue.clear()
            self._board.clear_locked()  # the writer stops offering (self.error is set)
            self._ring.reset()
            self.pending = 0
            self._cv.notify_all()

    def _prepare(self, it: _Item) -> None:
        """Statistics, checksum and (stats mode) sketch of one record, in the writer thread."""
        if it.same_as is not None:
            src = it.same_as.rec
            for key in ("stats", "checksum", "sketch"):
                if key in src:
                    it.rec[key] = src[key]
            it.rec.setdefault("extra", {})["same_data_as_seq"] = src["seq"]
            it.rec["_same_as"] = src  # the writer points it at the same shard tensor
            return
        t = it.tensor
        if t is None:
            return
        try:
            if it.event is not None:
                it.event.synchronize()  # the device-to-host copy has landed
            self._summarise(it.rec, t, self.with_sketch and not it.store, self._stats)
            if it.store:
                it.rec["checksum"] = checksum(t)
        except Exception as e:
            r = it.rec
            raise SummaryFailed(f"statistics of {r.get('module')!r}[{r.get('call')}].{r.get('role')} "
                                f"{r.get('path')!r} failed: {type(e).__name__}: {e}") from e

    def _offer(self, items: list[_Item]) -> dict[int, Task]:
        """Offer the statistics of ``items`` to threads waiting in ``flush()``.

        Records that copy another's results (``same_as``) and large ones (split on their
        own, see ``_stats``) stay with the writer.
        """
        mine = [it for it in items
                if not it.tokens and it.same_as is None and it.tensor is not None and not _goes_early(it)]
        tasks = self._board.offer(lambda it=it: self._prepare(it) for it in mine)
        return {id(it): task for it, task in zip(mine, tasks)}

    @property
    def assisted(self) -> int:
        """Pieces of statistics computed by threads waiting in ``flush()``."""
        return self._board.taken

    def _stats(self, t: torch.Tensor, sk: CountSketch | None) -> TensorStats:
        """``tensor_stats`` (feeding ``sk``), shared with a thread waiting in ``flush()``.

        The last tensors of a step (the logits, typically the largest) are summarised
        while the model's thread waits for the flush. A large tensor is therefore taken in
        chunks, and once a thread is waiting, half of what remains is offered to it.
        """
        if t.numel() * t.element_size() < SPLIT_BYTES:
            return tensor_stats(t, sketch=sk)
        n = t.numel() * (2 if t.is_complex() else 1)
        chunk = max(1, n * SPLIT_CHUNK_BYTES // (t.numel() * t.element_size()))
        sums = StatSums()
        task: Task | None = None
        sk2 = None
        pos, end = 0, n
        while pos < end:
            if task is None and self._board.waiting and end - pos >= 2 * chunk:
                mid = pos + (end - pos) // 2
                sk2 = CountSketch(sk.dim) if sk is not None else None
                task, = self._board.offer(
                    [lambda m=mid, s2=sk2: stat_sums(t, m, None, s2)])
                end = mid
            stop = min(pos + chunk, end)
            sums = sums + stat_sums(t, pos, stop, sk)
            pos = stop
        if task is not None:
            rest = self._board.collect(task)
            if sk is not None:
                sk.acc.add_(sk2.acc)
            sums = sums + rest
        return stats_from_sums(t, sums)

    def _hand_off(self, batch: list[_Item]) -> None:
        """Queue a prepared batch for the disk thread, which writes and publishes it."""
        with self._cv:
            # Back-pressure: at most MAX_HANDED batches wait for the disk, so a slow disk
            # slows the writer (and, through the budget, the hooks) instead of piling up.
            while self._handed >= MAX_HANDED and self.error is None:
                self._cv.wait(0.5)
            if self.error is None:
                self._disk_queue.append(batch)
                self._handed += 1
                self._cv.notify_all()
                return
        self._release(batch)

    def _run(self) -> None:
        # Whatever escapes the loop (a bug, an interpreter error) must still be reported:
        # a writer thread that dies silently would leave hooks queueing into nothing,
        # blocked forever on the memory budget, and the run marked complete but empty.
        try:
            _one_intra_op_thread()  # statistics must not compete with the model's threads
            self._loop()
        except BaseException as e:  # noqa: BLE001 - the observed program must survive
            self._set_error(f"writer thread crashed: {type(e).__name__}: {e}")
        finally:
            with self._cv:
                self._disk_queue.append(_STOP)
                self._cv.notify_all()

    def _loop(self) -> None:
        batch: list[_Item] = []
        batch_bytes = 0
        batch_started = 0.0
        marked = 0
        while True:
            self._ring.populate_ahead()
            with self._cv:
                while (not self._queue and not self._closing and not (self._waiting and batch)
                       and self._flush_requested == marked
                       and not (batch_bytes >= self.commit_bytes and not self._handed)):
                    timeout = None
                    if batch:
                        timeout = max(0.0, batch_started + self.flush_interval - time.monotonic())
                        if timeout == 0.0:
                            break
                        # Condition.wait overflows past TIMEOUT_MAX (an enormous interval).
                        timeout = min(timeout, threading.TIMEOUT_MAX)
                    self._writer_asleep = True
                    self._writer_timed = timeout is not None
                    try:
                        self._cv.wait(timeout)
                    finally:
                        self._writer_asleep = self._writer_timed = False
                items = list(self._queue)
                self._queue.clear()
                flush_target = self._flush_requested
                closing = self._closing
            try:
                done: list[_Item] = []
                offered: dict[int, Task] = {}
                for i, it in enumerate(items):
                    if not offered and self._board.waiting and len(items) - i >= 4:
                        # A thread waits in flush(): it takes the second half of the backlog.
                        offered = self._offer(items[i + (len(items) - i) // 2:])
                    if it.tokens:
                        self.writer.append_tokens(it.rec)
                        continue
                    self._ring.populate_ahead()  # keep fresh pages ahead of the hooks' copies
                    if not batch:
                        batch_started = time.monotonic()
                    if _goes_early(it):
                        batch.append(it)
                        self._release(done)
                        done = []
                        it.ready = False
                        self._hand_off(batch)
                        batch, batch_bytes = [], 0
                        try:
                            self._prepare(it)  # while the disk thread writes its data
                        finally:
                            with self._cv:
                                it.ready = True
                                self._cv.notify_all()
                        continue
                    task = offered.pop(id(it), None)
                    if task is not None:
                        self._board.collect(task)
                    else:
                        self._prepare(it)
                    if not it.store:
                        # Final already (no shard to point at): encoded now, not in the
                        # flush tail. Its twin, if any, holds no data to share either.
                        it.rec.pop("_same_as", None)
                        it.rec[PRE_ENCODED] = encode_line(it.rec)
                    batch.append(it)
                    if it.store:
                        batch_bytes += it.nbytes
                    else:
                        done.append(it)  # stats computed: its copy is no longer needed
                    # Checked per record, not once per wake-up: a writer that fell behind
                    # takes many records at once, and must still cut shards at their size
                    # and commit the oldest records within about flush_interval.
                    if (batch_bytes >= self.max_batch
                            or (batch_bytes >= self.commit_bytes and not self._handed)
                            or time.monotonic() >= batch_started + self.flush_interval):
                        self._release(done)
                        done = []
                        self._hand_off(batch)
                        batch, batch_bytes = [], 0
                self._release(done)
                due = batch and (
                    time.monotonic() >= batch_started + self.flush_interval
                    or flush_target > marked or closing or self._waiting
                    or (batch_bytes >= self.commit_bytes and not self._handed)
                )
                if due:
                    self._hand_off(batch)
                    batch, batch_bytes = [], 0
            except BaseException as e:  # noqa: BLE001 - the observed program must survive
                batch, batch_bytes = [], 0
                self._set_error(e)
            with self._cv:
                if not batch and not self._queue and flush_target > marked:
                    marked = flush_target
                    self._disk_queue.append(flush_target)
                    self._cv.notify_all()
                if self.error is not None:
                    self._flush_done = self._flush_requested
                    marked = self._flush_requested
                    self._cv.notify_all()
                if closing and not self._queue and (not batch or self.error is not None):
                    return

    # -- disk thread: shard write, fsync, rename, manifest append, in batch order ---------
    def _disk_run(self) -> None:
        try:
            self._disk_loop()
        except BaseException as e:  # noqa: BLE001 - the observed program must survive
            self._set_error(f"writer thread crashed: {type(e).__name__}: {e}")

    def _wait_ready(self, batch: list[_Item]) -> None:
        """Block until every record of ``batch`` has its statistics (see EARLY_BYTES)."""
        with self._cv:
            self._cv.wait_for(lambda: self.error is not None or all(it.ready for it in batch))
            if self.error is not None:
                raise RuntimeError(f"capture pipeline failed: {self.error}")

    def _disk_loop(self) -> None:
        while True:
            with self._cv:
                while not self._disk_queue:
                    self._cv.wait()
                entry = self._disk_queue.popleft()
            if entry is _STOP:
                return
            if isinstance(entry, int):  # a flush marker: everything before it is published
                with self._cv:
                    self._flush_done = max(self._flush_done, entry)
                    self._cv.notify_all()
                continue
            staged = None
            try:
                if self.error is None:
                    staged = self.writer.stage([(it.rec, it.tensor if it.store else None) for it in entry],
                                               ready=lambda: self._wait_ready(entry))
                    self._release(entry)  # the data is written (on disk, or in the page cache)
                    if staged is not None:
                        self.writer.publish(staged)
            except BaseException as e:  # noqa: BLE001 - the observed program must survive
                if staged is not None:
                    self.writer.discard(staged)
                self._set_error(e)
            with self._cv:
                self._release_locked(entry)
                self._handed -= 1
                self._cv.notify_all()
