"""Work the writer thread hands to threads blocked in ``flush()``.

A thread waiting for a flush is idle until the writer has caught up; at the end of a
step that is the model's own thread. The writer therefore offers pieces of its work
(the statistics of whole records, or half of a large tensor's) on a board; waiting
threads take them, and whatever nobody took the writer runs itself. Measured in
bench/NOTES.md: the stats-mode flush tail fell from ~30 to ~17 ms.

The board shares the pipeline's condition variable (one lock for all pipeline state).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Iterable


class Task:
    """One offered piece of work, run once by whichever side claims it first.

    Its exception is kept for the writer, never raised in the waiting thread.
    """

    __slots__ = ("fn", "claimed", "done", "result", "error")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.claimed = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the writer thread
            self.error = e


class AssistBoard:
    """Tasks on offer, and how many threads wait in ``flush()`` to take them."""

    def __init__(self, cv: threading.Condition) -> None:
        self._cv = cv
        self._tasks: deque[Task] = deque()
        self.waiting = 0
        """Threads blocked in ``flush()``: read without the lock as a hint."""
        self.taken = 0
        """Tasks run by waiting threads (for tests and diagnostics)."""

    # -- writer side ---------------------------------------------------------------
    def offer(self, fns: Iterable[Callable[[], Any]]) -> list[Task]:
        tasks = [Task(fn) for fn in fns]
        if tasks:
            with self._cv:
                self._tasks.extend(tasks)
                self._cv.notify_all()
        return tasks

    def collect(self, task: Task) -> Any:
        """The task's result: waited for if a helper took it, else computed here."""
        with self._cv:
            run_here = not task.claimed
            if run_here:
                task.claimed = True
                if task in self._tasks:  # not there if a failure cleared the board
                    self._tasks.remove(task)
            else:
                self._cv.wait_for(lambda: task.done)
        if run_here:
            task.run()
        if task.error is not None:
            raise task.error
        return task.result

    def clear_locked(self) -> None:
        """Withdraw every offer (the pipeline failed); call with the lock held."""
        self._tasks.clear()

    # -- waiting side --------------------------------------------------------------
    def serve_one_locked(self) -> bool:
        """Run one offered task, if any (called with the lock held; released while running)."""
        if not self._tasks:
            return False
        task = self._tasks.popleft()
        task.claimed = True
        self.taken += 1
        self._cv.release()
        try:
            task.run()
        finally:
            self._cv.acquire()
            task.done = True
            self._cv.notify_all()
        return True
