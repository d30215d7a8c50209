"""Concurrency: four rank processes capturing into one run while a reader lists it.

Ranks are real processes (forked from tests/helpers/capture_zygote.py) with
``CaptureSession(rank=r)``; rank 0 prepares the directory and writes run.json, the others
use ``prepare_dir=False``. The test process opens the run over and over while they
write: every listing must be free of bad lines, every listed record must load with a
matching checksum, and no rank's record count may ever go down.
"""

from __future__ import annotations

import time

import pytest

import tensortap as tt
from helpers.capture_zygote import LAYERS
from helpers.zygote_client import Zygote, is_alive, read_progress, wait_for
from tensortap.store.reader import Run
from tensortap.store.verify import verify_run

RANKS = 4
STEPS = 60
RECORDS_PER_STEP = 2 * (2 * LAYERS - 1 + 1)   # input + output of every module and the root


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_ranks_write_one_run_while_a_reader_lists_it(zygote, tmp_path):
    run_dir = tmp_path / "run"
    progress = [tmp_path / f"progress{r}.txt" for r in range(RANKS)]
    pids = [zygote.spawn(run=str(run_dir), progress=str(progress[0]), rank=0, world_size=RANKS,
                         steps=STEPS, flush_interval=0.05, step_sleep=0.01)]
    # Rank 0 creates the directory; the others join it (prepare_dir=False).
    wait_for(lambda: read_progress(progress[0]).started is not None, 30, "rank 0 to start")
    for r in range(1, RANKS):
        pids.append(zygote.spawn(run=str(run_dir), progress=str(progress[r]), rank=r, world_size=RANKS,
                                 write_run_json=False, prepare_dir=False, steps=STEPS,
                                 flush_interval=0.05, step_sleep=0.01))

    listings = loaded = torn_seen = 0
    last_count = {r: 0 for r in range(RANKS)}
    deadline = time.monotonic() + 60
    while any(is_alive(p) for p in pids):
        assert time.monotonic() < deadline, "ranks did not finish"
        run = Run(run_dir)
        recs = run.records()
        assert run.problems == [], run.problems
        torn_seen += bool(run.notes)                    # a line being appended right now
        counts = {r: 0 for r in range(RANKS)}
        for rec in recs:
            counts[rec.rank] += 1
            if rec.has_data:
                run.load(rec)                           # checksum, shape and dtype must match
                loaded += 1
        for r in range(RANKS):
            assert counts[r] >= last_count[r], f"rank {r} went from {last_count[r]} to {counts[r]} records"
        last_count = counts
        listings += 1
        run.close()

    for r in range(RANKS):
        prog = read_progress(progress[r])
        assert prog.error is None and prog.done is not None, f"rank {r}: {prog}"
    run = tt.open(run_dir)
    assert run.status == "complete", run.reason
    assert sorted(run.ranks) == list(range(RANKS))
    for r in range(RANKS):
        recs = run.records(rank=r)
        assert len(recs) == STEPS * RECORDS_PER_STEP
        assert [x.seq for x in recs] == list(range(len(recs)))
    res = verify_run(run_dir)
    assert res.ok and not res.warnings, [str(p) for p in res.problems]
    assert res.records_verified == RANKS * STEPS * RECORDS_PER_STEP
    print(f"\n{listings} listings during the write, {loaded} record loads, "
          f"{torn_seen} saw a line mid-append")
    assert listings >= 5, "the reader barely ran while ranks were writing"
