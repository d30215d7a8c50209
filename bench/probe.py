"""Measurements that need a fresh process, run by bench/run.py as subprocesses.

``probe.py import --tensortap 0|1 --rounds N``: median forward time of the benchmark model
in a process that did (1) or did not (0) ``import tensortap``, and whether any hook or
thread exists afterwards.

``probe.py first --tool tensortap|vllm``: the first captured step (forward + flush) in a
new process, where every buffer and file is new, and the bare forward for scale.

``probe.py memory --budget BYTES --multiple K [--on-full block|drop] [--steps N]``: peak RSS
growth while capturing at least ``K`` times the budget (resident memory is a process-wide
figure, so it gets a process of its own). Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import median, peak_rss_bytes, reset_peak_rss, rss_bytes, timer  # noqa: E402
from workload import build_model, forward  # noqa: E402


def _hook_count(model: torch.nn.Module) -> int:
    from torch.nn.modules import module as M

    n = sum(len(d) for d in (M._global_forward_hooks, M._global_forward_pre_hooks,
                             M._global_backward_hooks, M._global_module_registration_hooks))
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    return n


def probe_import(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    threads_before = threading.active_count()
    if args.tensortap:
        import tensortap  # noqa: F401 - the point of the probe
    model, ids = build_model()
    for _ in range(2):
        forward(model, ids)
    times = []
    for _ in range(args.rounds):
        stop = timer()
        forward(model, ids)
        times.append(stop())
    return {"median_s": median(times), "times": times, "hooks": _hook_count(model),
            "extra_threads": threading.active_count() - threads_before,
            "tensortap_imported": "tensortap" in sys.modules}


def probe_memory(args: argparse.Namespace) -> dict:
    import tensortap as tt

    torch.set_num_threads(1)
    model, ids = build_model()
    for _ in range(2):
        forward(model, ids)
    work = Path(tempfile.mkdtemp(prefix="tt-bench-mem-"))
    try:
        # Bytes one step captures, from a throwaway run (its memory is gone before we measure).
        with tt.capture(model, work / "sizing", durable=False) as s:
            forward(model, ids)
            s.flush()
            step_bytes = s._pipeline.writer.bytes_written
        shutil.rmtree(work / "sizing")
        steps = args.steps or math.ceil(args.multiple * args.budget / step_bytes)
        rss0 = rss_bytes()
        reset_ok = reset_peak_rss()
        stop = timer()
        with tt.capture(model, work / "run", pending_bytes=args.budget, on_full=args.on_full) as s:
            for _ in range(steps):
                forward(model, ids)
        seconds = stop()
        peak = peak_rss_bytes()
        summary = json.loads((work / "run" / "run.json").read_text())["summary"]
        lines = [json.loads(x) for x in (work / "run" / "rank-0" / "manifest.jsonl").read_text().splitlines()]
        # Bytes of the tensors the records describe: records of one unchanged tensor share
        # their stored bytes, so this exceeds bytes_written.
        logical = sum(math.prod(r["shape"]) * getattr(torch, r["dtype"]).itemsize for r in lines if "dtype" in r)
        return {
            "budget": args.budget, "on_full": args.on_full, "steps": steps, "step_bytes": step_bytes,
            "seconds": seconds, "rss_before": rss0, "peak_rss": peak, "rss_growth": peak - rss0,
            "peak_reset": reset_ok, "records": summary["records"], "bytes_written": summary["bytes_written"],
            "dropped_records": summary["dropped_records"], "dropped_bytes": summary["dropped_bytes"],
            "peak_pending": summary["peak_pending_bytes"], "logical_bytes": logical,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def probe_first(args: argparse.Namespace) -> dict:
    """The first captured step in a new process: fresh memory, files, everything cold."""
    torch.set_num_threads(1)
    model, ids = build_model()
    bare = []
    for _ in range(3):
        stop = timer()
        forward(model, ids)
        bare.append(stop())
    work = Path(tempfile.mkdtemp(prefix="tt-bench-first-"))
    try:
        if args.tool == "tensortap":
            import tensortap as tt

            with tt.capture(model, work / "run") as s:  # start untimed, as in the capture section
                stop = timer()
                forward(model, ids)
                s.flush()
                seconds = stop()
        else:
            from baselines import VllmStyleLogger

            with VllmStyleLogger(model, work / "run"):
                stop = timer()
                forward(model, ids)
                seconds = stop()
        return {"tool": args.tool, "seconds": seconds, "bare_s": median(bare[1:])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("import")
    pi.add_argument("--tensortap", type=int, choices=(0, 1), required=True)
    pi.add_argument("--rounds", type=int, default=15)
    pm = sub.add_parser("memory")
    pm.add_argument("--budget", type=int, required=True)
    pm.add_argument("--multiple", type=float, default=10)
    pm.add_argument("--steps", type=int, default=0)
    pm.add_argument("--on-full", choices=("block", "drop"), default="block")
    pf = sub.add_parser("first")
    pf.add_argument("--tool", choices=("tensortap", "vllm"), required=True)
    args = p.parse_args()
    result = {"import": probe_import, "memory": probe_memory, "first": probe_first}[args.cmd](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
