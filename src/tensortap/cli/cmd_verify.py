"""``tensortap verify``: check every shard's structure and every record's checksum and shape."""

from __future__ import annotations

import json

from tensortap.cli.common import add_command
from tensortap.errors import one_line

EXIT_OK = 0
EXIT_PROBLEMS = 1


def register(sub) -> None:
    p = add_command(
        sub, "verify",
        "Check a run: shard structure, every record's checksum, shape and dtype, manifest lines, "
        "missing or unreferenced shards. Exit 0: no errors; 1: problems found; 2: not a readable run.",
        "tensortap verify runs/a",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="list at most N problems (default 50; 0: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tensortap.store.verify import verify_run
    # verify_run raises RunFormatError (exit 2 via main) when RUN is not a readable run.
    res = verify_run(args.run)
    if args.json:
        print(json.dumps(res.to_json(), indent=1))
        return EXIT_OK if res.ok else EXIT_PROBLEMS
    # Plain print, not rich: names in a hostile run may hold markup or control
    # characters; one_line escapes the latter, and nothing here interprets the former.
    reason = f" ({one_line(res.reason, 200)})" if res.reason else ""
    print(f"{one_line(res.run)}: {res.records} record(s) in {len(res.ranks)} rank(s), "
          f"{res.shards} shard(s); status {res.status}{reason}")
    shown = res.problems if args.limit <= 0 else res.problems[: args.limit]
    for prob in shown:
        print(f"  {prob}")
    if len(shown) < len(res.problems):
        print(f"  … and {len(res.problems) - len(shown)} more (use --limit 0 or --json)")
    verdict = "ok" if res.ok else "PROBLEMS FOUND"
    print(f"{verdict}: {res.records_verified}/{res.records_with_data} record(s) with data verified; "
          f"{len(res.errors)} error(s), {len(res.warnings)} warning(s)")
    return EXIT_OK if res.ok else EXIT_PROBLEMS
