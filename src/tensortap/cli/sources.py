"""Options every command that reads a run shares: ``--format`` and ``--trust-pickle``."""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from tensortap.store.importers.names import FORMAT_NAMES as _FORMATS

if TYPE_CHECKING:
    from tensortap.store.reader import Run


def add_open_options(p: argparse.ArgumentParser, suffixes: tuple[str, ...] = ("",)) -> None:
    """Add ``--format[-X]`` and one ``--trust-pickle`` to a command's parser.

    ``suffixes`` gives one ``--format`` per input (``("-a", "-b")`` for diff).
    """
    for s in suffixes:
        p.add_argument(f"--format{s}", choices=_FORMATS, default=None, metavar="FORMAT",
                       help=f"layout of the input{' ' + s[1:].upper() if s else ''} (default: detect): "
                            + ", ".join(_FORMATS))
    p.add_argument("--trust-pickle", action="store_true",
                   help="let .pt files of a dump run the code their pickle names (only for dumps "
                        "from a trusted source; by default only tensors and plain data load)")


def open_source(path: str, args: argparse.Namespace, suffix: str = "") -> "Run":
    """Open ``path`` as a run or a dump, honouring ``--format[suffix]`` and ``--trust-pickle``."""
    from tensortap.store.importers.detect import open_any

    fmt = getattr(args, f"format{suffix.replace('-', '_')}", None)
    return open_any(path, format=fmt, trust_pickle=bool(getattr(args, "trust_pickle", False)))
