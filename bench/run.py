"""tensortap's performance benchmark (issue 7): one command, every figure a ratio taken in one run.

    .venv/bin/python bench/run.py            # full run (a few minutes), writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # smoke run (about a minute), writes nothing unless --out
    .venv/bin/python bench/run.py --only capture stats

The model is a transformers Llama built from a config with random weights (4 layers,
hidden 512, 256 tokens, fp32, CPU, one torch thread); see workload.py, and baselines.py
for the approaches compared against.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from measure import Machine, load_average  # noqa: E402
from sections import SECTIONS, Section, make_ctx  # noqa: E402
from workload import Shape  # noqa: E402


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _met(m: bool | None) -> str:
    return "" if m is None else ("yes" if m else "**no**")


def print_section(sec: Section) -> None:
    print(f"\n== {sec.title}")
    for r in sec.rows:
        tail = f"  [ratio {_fmt_ratio(r.ratio)}, target {r.target}: {_met(r.met).strip('*')}]" if r.target else ""
        note = f"  ({r.note})" if r.note else ""
        print(f"  {r.name}: {r.value}{tail}{note}")


def render(sections: list[Section], machine: dict[str, str], loads: tuple, seconds: float, args) -> str:
    shape = Shape()
    lines = [
        "# tensortap benchmark results",
        "",
        f"Written by `bench/run.py` on {datetime.date.today().isoformat()} in {seconds:.0f} s"
        f"{' (--quick)' if args.quick else ''}. Every ratio compares figures taken in the same run.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        f"- Load average (1/5/15 min) before: {loads[0][0]:.2f} / {loads[0][1]:.2f} / {loads[0][2]:.2f}, "
        f"after: {loads[1][0]:.2f} / {loads[1][1]:.2f} / {loads[1][2]:.2f}. The machine is shared: other "
        "jobs ran during the benchmark, so absolute times are noisy; ratios come from interleaved rounds.",
        "",
        "## Workload",
        "",
        f"transformers `LlamaForCausalLM` from a config with seeded random weights: {shape.layers} layers, "
        f"hidden {shape.hidden}, intermediate {shape.intermediate}, {shape.heads} heads, vocab {shape.vocab}; "
        f"one sequence of {shape.tokens} tokens, fp32, CPU, `torch.set_num_threads(1)`, prefill without KV "
        "cache. Capture: every module (the root included), inputs and outputs.",
        "",
        "## Summary",
        "",
        "| measurement | figure | ratio | target | met |",
        "|---|---|---|---|---|",
    ]
    for sec in sections:
        for r in sec.rows:
            if r.target:
                lines.append(f"| {r.name} | {r.value} | {_fmt_ratio(r.ratio)} | {r.target} | {_met(r.met)} |")
    for sec in sections:
        lines += ["", f"## {sec.title}", "", f"How: {sec.method}" if sec.method else "", ""]
        lines += ["| measurement | figure | note |", "|---|---|---|"]
        for r in sec.rows:
            lines.append(f"| {r.name} | {r.value} | {r.note} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer rounds, smaller runs")
    p.add_argument("--rounds", type=int, help="interleaved rounds per timing (default 7, quick 3)")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    p.add_argument("--out", type=Path, help="results file (default bench/RESULTS.md; none with --quick or --only)")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--notes", type=Path, help="a Markdown file appended to the results (analysis)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rounds = args.rounds or (3 if args.quick else 7)
    # A partial run (--only, --quick) never replaces the full results file unless asked to.
    out = args.out or (None if args.quick or args.only else HERE / "RESULTS.md")
    work = Path(tempfile.mkdtemp(prefix="tt-bench-", dir=args.workdir))
    machine = Machine().describe()
    load0 = load_average()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    t0 = time.monotonic()
    sections: list[Section] = []
    try:
        ctx = make_ctx(work, rounds, args.quick)
        for name, fn in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            sec = fn(ctx)
            sections.append(sec)
            print_section(sec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    load1 = load_average()
    print(f"\nload average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {seconds:.0f} s")
    if out is not None:
        text = render(sections, machine, (load0, load1), seconds, args)
        if args.notes is not None:
            text += "\n" + args.notes.read_text()
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
