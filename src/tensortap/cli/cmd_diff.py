"""``tensortap diff``: compare two runs, find the first divergence (exit 0 agree, 1 diverged, 2 error)."""

from __future__ import annotations

import sys

from rich.markup import escape

from tensortap.cli.common import add_command, console, err_console
from tensortap.cli.sources import add_open_options, open_source
from tensortap.errors import TensortapError, one_line


def register(sub) -> None:
    p = add_command(
        sub, "diff",
        "Compare two runs record by record; show where they first diverge "
        "(exit 0 agree, 1 diverged, 2 error or inconclusive).",
        "tensortap diff runs/a runs/b --html report.html\n"
        "  tensortap diff runs/a runs/b --json --rtol 1e-3 --only 'layers\\.(1|2)\\.'\n"
        "  tensortap diff runs/fp32 runs/bf16-engine --floor runs/bf16-reference\n"
        "  tensortap diff runs/fp32 runs/int8 --top 10     # where does quantization hurt most",
    )
    p.add_argument("run_a", metavar="RUN_A", help="the reference run")
    p.add_argument("run_b", metavar="RUN_B", help="the run to check against it")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema: docs/diff.md)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument("--map", default="auto", metavar="auto|none|FILE",
                   help="pairing: auto (same engine: raw names), none, or a YAML/JSON file of rename rules")
    p.add_argument("--atol", type=float, metavar="X", help="absolute tolerance (RMS) for every floating pair")
    p.add_argument("--rtol", type=float, metavar="Y", help="relative tolerance on ||a-b||/||a||")
    p.add_argument("--tol", action="append", default=[], metavar="REGEX:rtol=X[,atol=Y]",
                   help="per-module tolerance (first matching regex wins; repeatable)")
    p.add_argument("--only", metavar="REGEX", help="compare only modules matching this regex")
    p.add_argument("--strict", action="store_true", help="records only one run has count as a divergence")
    p.add_argument("--floor", metavar="RUN_C",
                   help="noise-floor run (e.g. the reference rerun in the other dtype): a pair diverges "
                        "when ||a-b|| > k*||a-c|| + tol/10")
    p.add_argument("--force", action="store_true", help="compare runs of different models or prompts anyway")
    p.add_argument("--read-all", action="store_true",
                   help="read every pair's data, even pairs whose stored checksums and statistics show "
                        "them identical (reported identical unread by default); verifies every checksum")
    add_open_options(p, ("-a", "-b"))
    p.add_argument("--limit", type=int, default=30, help="table rows to show (0: all selected)")
    p.add_argument("--all", action="store_true", help="show every pair, not just the interesting part")
    p.add_argument("--top", type=int, default=0, metavar="N",
                   help="also list the N module outputs whose error grows most (own error over carried)")
    p.add_argument("--top-per", choices=["overall", "step"], default="overall",
                   help="--top ranks each module once (overall: its worst step) or each step apart")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.top < 0:
        raise TensortapError("--top must be >= 0")
    if args.limit < 0:
        raise TensortapError("--limit must be >= 0 (0 shows every selected row)")
    from tensortap.compare.api import diff
    from tensortap.compare.tolerance import parse_override
    from tensortap.report.diff_table import progress_bar, render

    overrides = [parse_override(s) for s in args.tol]
    # Runs or other tools' dumps (--format-a/-b force a layout; --trust-pickle for .pt dumps).
    run_a, run_b = open_source(args.run_a, args, "-a"), open_source(args.run_b, args, "-b")
    floor = open_source(args.floor, args, "-floor") if args.floor else None
    with progress_bar(err_console) as progress:
        report = diff(run_a, run_b, mapping=args.map, atol=args.atol, rtol=args.rtol,
                      tolerances=overrides, only=args.only, strict=args.strict, floor=floor,
                      force=args.force, read_all=args.read_all, progress=progress,
                      top=max(args.top, 10), top_per=args.top_per)
    html_path = report.to_html(args.html) if args.html else None
    if args.json:
        print(report.to_json(indent=1))
        if html_path is not None:
            print(f"HTML report: {one_line(str(html_path))}", file=sys.stderr)
        return report.exit_code
    console.print(render(report, limit=args.limit, show_all=args.all, top=args.top))
    if html_path is not None:
        console.print(f"HTML report: {escape(one_line(str(html_path)))}", highlight=False)
    return report.exit_code
