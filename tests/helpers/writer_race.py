"""A capture process for the single-writer tests: waits until a start time, then captures.

usage: writer_race.py RUN START_EPOCH STEPS STEP_SLEEP OVERWRITE(0|1) READY_FILE
Exit 0 after a complete capture, 3 when tensortap refused the run (message on stderr).
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import tensortap as tt
from tensortap.errors import TensortapError

run, start, steps, step_sleep, overwrite, ready = sys.argv[1:7]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)).eval()
x = torch.randn(4, 32)
delay = float(start) - time.time()
if delay > 0:
    time.sleep(delay)
try:
    with tt.capture(model, run, overwrite=overwrite == "1", flush_interval=0.05), torch.no_grad():
        Path(ready).write_text("started")
        for _ in range(int(steps)):
            model(x)
            time.sleep(float(step_sleep))
except TensortapError as e:
    print(f"refused: {e}", file=sys.stderr)
    sys.exit(3)
