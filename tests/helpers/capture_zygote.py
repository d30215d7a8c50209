"""Fork server for the reliability tests: one capturing child process per request.

Starting Python and importing torch costs seconds; forking a process that already has
them costs milliseconds, so crash tests can afford dozens of real SIGKILL trials. No
torch operation runs in this process before it forks (so no thread pool exists to be
broken by fork); each child sets one thread and builds its own model.

Protocol: one JSON request per stdin line; the answer is the child's pid on stdout.
The child appends to the request's ``progress`` file (line-buffered, so every line
written before a SIGKILL is on disk):
    started <t>                      capture started (run.json exists)
    step <i> <records> <t>           forward i returned; <records> captured so far
    fault <records> <t>              all <records> flushed, then a writer fault planted
    done <t>                         capture stopped normally
<t> is time.monotonic(), which is system-wide on Linux and so comparable with the
test process's clock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from tensortap.capture.config import build_config  # noqa: E402
from tensortap.capture.session import CaptureSession  # noqa: E402
from tensortap.store import format as fmt  # noqa: E402

HIDDEN = 256
BATCH = 8
LAYERS = 6


def make_model() -> nn.Module:
    """Linear/ReLU stack: 2 * LAYERS - 1 modules + the root, 2 records each per step."""
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for i in range(LAYERS):
        mods.append(nn.Linear(HIDDEN, HIDDEN))
        if i < LAYERS - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


def plant_writer_fault(run: str, rank: int) -> None:
    """Put a directory where the writer's next shard must go: its rename then fails
    with a real OS error (EISDIR) inside the writer thread."""
    data = fmt.rank_dir(Path(run), rank) / fmt.DATA_DIR
    taken = [int(p.name[len(fmt.SHARD_PREFIX):-len(fmt.SHARD_SUFFIX)])
             for p in data.iterdir() if fmt.is_valid_shard_name(p.name)]
    (data / fmt.shard_name(max(taken, default=0) + 1)).mkdir()


def child(req: dict) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    torch.set_num_threads(1)
    progress = open(req["progress"], "a", buffering=1)
    model = make_model()
    cfg = build_config(out=req["run"], flush_interval=req.get("flush_interval", 0.1),
                       pending_bytes=req.get("pending_bytes", 4 * 2**20))
    session = CaptureSession(model, cfg, rank=req.get("rank", 0), world_size=req.get("world_size", 1),
                             write_run_json=req.get("write_run_json", True),
                             prepare_dir=req.get("prepare_dir", True))
    session.start()
    progress.write(f"started {time.monotonic()}\n")
    gen = torch.Generator().manual_seed(1234 + req.get("rank", 0))
    steps = req.get("steps")
    deadline = time.monotonic() + req.get("max_seconds", 30)
    i = 0
    with torch.inference_mode():
        while (steps is None or i < steps) and time.monotonic() < deadline:
            model(torch.randn(BATCH, HIDDEN, generator=gen))
            progress.write(f"step {i} {session.records} {time.monotonic()}\n")
            if i == req.get("fault_after_step"):
                session.flush()
                plant_writer_fault(req["run"], req.get("rank", 0))
                progress.write(f"fault {session.records} {time.monotonic()}\n")
            i += 1
            time.sleep(req.get("step_sleep", 0.02))
    session.stop()
    progress.write(f"done {time.monotonic()}\n")


def main() -> None:
    # Children are reaped by the kernel; the tests watch them by pid and progress file.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(req)
            except BaseException as e:  # noqa: BLE001 - reported to the test via the progress file
                with open(req["progress"], "a") as f:
                    f.write(f"error {type(e).__name__}: {e}\n")
                code = 3
            finally:
                os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
