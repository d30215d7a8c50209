"""Shared CLI plumbing: parser formatting, step lists, and the one-line error exit."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from rich.console import Console

from tensortap.errors import TensortapError

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_USAGE = 2

def _make_console(stderr: bool = False) -> Console:
    # Piped output (CI logs, `| less`) gets a wide fixed width instead of rich's 80, so
    # module names stay on one line.
    c = Console(stderr=stderr)
    if not c.is_terminal:
        c = Console(stderr=stderr, width=160)
    return c


console = _make_console()
err_console = _make_console(stderr=True)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written."""


def add_command(subparsers, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example."""
    return subparsers.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )


def parse_steps(text: str | None) -> list[int] | None:
    """``"0,1,5-7"`` -> [0, 1, 5, 6, 7]."""
    if text is None or text == "":
        return None
    steps: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                if int(b) < int(a):
                    raise TensortapError(f"invalid step list {text!r}: range {part!r} is reversed "
                                         f"(write {b.strip()}-{a.strip()})")
                steps.extend(range(int(a), int(b) + 1))
            elif part:
                steps.append(int(part))
    except ValueError:
        raise TensortapError(f"invalid step list {text!r}; use e.g. 0,1,5-7") from None
    if any(s < 0 for s in steps):
        raise TensortapError(f"invalid step list {text!r}: steps are >= 0")
    return steps


def fail(message: str) -> NoReturn:
    print(f"tensortap: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)
