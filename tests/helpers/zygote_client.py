"""Test-side handle on tests/helpers/capture_zygote.py and its progress files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ZYGOTE = Path(__file__).with_name("capture_zygote.py")


class Zygote:
    """A running fork server; ``spawn`` starts one capturing child and returns its pid."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            raise RuntimeError(f"capture zygote did not start (said {first!r})")

    def spawn(self, **req) -> int:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_dead(pid: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > end:
            raise AssertionError(f"process {pid} still alive after {timeout}s")
        time.sleep(0.005)


@dataclass
class Progress:
    """What a child reported before it died (see capture_zygote.py)."""

    started: float | None = None
    steps: list[tuple[int, int, float]] = field(default_factory=list)
    fault: tuple[int, float] | None = None
    done: float | None = None
    error: str | None = None


def read_progress(path: Path) -> Progress:
    out = Progress()
    if not path.exists():
        return out
    for line in path.read_text().split("\n"):
        parts = line.split()
        try:
            if parts[:1] == ["started"]:
                out.started = float(parts[1])
            elif parts[:1] == ["step"] and len(parts) == 4:
                out.steps.append((int(parts[1]), int(parts[2]), float(parts[3])))
            elif parts[:1] == ["fault"] and len(parts) == 3:
                out.fault = (int(parts[1]), float(parts[2]))
            elif parts[:1] == ["done"]:
                out.done = float(parts[1])
            elif parts[:1] == ["error"]:
                out.error = line
        except (IndexError, ValueError):
            pass  # a line cut by the kill
    return out


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
