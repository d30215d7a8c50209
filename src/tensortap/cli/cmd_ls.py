"""``tensortap ls``: list the records of a run."""

from __future__ import annotations

import json
import sys

from rich.markup import escape

from tensortap.cli.common import add_command, console
from tensortap.cli.sources import add_open_options, open_source
from tensortap.errors import one_line
from tensortap.report.records import record_summary, records_table


def register(sub) -> None:
    p = add_command(sub, "ls", "List the records of a run (module, step, call, role, path, shape, stats).",
                    "tensortap ls runs/a --module 'layers\\.1\\.mlp' --step 0")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--module", metavar="REGEX", help="only modules matching this regex")
    p.add_argument("--step", type=int)
    p.add_argument("--role", choices=["input", "output"])
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--limit", type=int, default=0, help="show at most N rows in the table (0: all)")
    add_open_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    r = open_source(args.run, args)
    recs = r.records(module=args.module, step=args.step, role=args.role)
    if args.json:
        print(json.dumps([record_summary(x) for x in recs], indent=1))
        # stdout stays the documented list of records; what is wrong with the run goes to
        # stderr (the exit code is the table's: listing a damaged run succeeds).
        if r.status != "complete":
            print(f"tensortap: note: run status {r.status}"
                  + (f" ({one_line(r.reason)})" if r.reason else ""), file=sys.stderr)
        for w in r.problems:
            print(f"tensortap: problem: {one_line(w)}", file=sys.stderr)
        return 0
    shown = recs[: args.limit] if args.limit > 0 else recs
    # Paths, reasons and warnings come from the user or from run.json (possibly hostile):
    # escape rich markup and control characters before printing them.
    console.print(records_table(shown, title=escape(one_line(f"{r.path} — {r.status}"))))
    more = f" (showing {len(shown)})" if len(shown) < len(recs) else ""
    console.print(f"{len(recs)} record(s){more}; steps {r.steps()}; status {r.status}"
                  + (f" ({escape(one_line(r.reason))})" if r.reason else ""), highlight=False)
    for w in r.warnings + r.problems + r.notes:
        console.print(f"[yellow]note:[/yellow] {escape(one_line(w))}", highlight=False)
    return 0
