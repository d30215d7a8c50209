"""Entry point: builds the parser from the command modules and maps errors to exit codes.

Exit codes: 0 ok / no divergence, 1 divergence or problems found, 2 usage or data error
(one line on stderr, no traceback unless --debug).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from tensortap.version import __version__
from tensortap.cli.common import EXIT_USAGE, HelpFormatter
from tensortap.errors import TensortapError, one_line

# Each module defines register(subparsers) and sets a `func(args) -> int` default.
COMMAND_MODULES = [
    "tensortap.cli.cmd_capture",
    "tensortap.cli.cmd_ls",
    "tensortap.cli.cmd_show",
    "tensortap.cli.cmd_demo",
    "tensortap.cli.cmd_convert",
    "tensortap.cli.cmd_verify",
    "tensortap.cli.cmd_diff",
    "tensortap.cli.cmd_localize",
    "tensortap.cli.cmd_vllm_ladder",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensortap",
        description="Capture intermediate tensors of PyTorch models and engines; find where two runs diverge.",
        epilog="example:\n  tensortap demo\n  tensortap capture MODEL_DIR --out runs/a --prompt 'Paris is' "
               "--max-new-tokens 3\n  tensortap ls runs/a",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tensortap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    debug = args.debug or os.environ.get("TENSORTAP_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except TensortapError as e:
        if debug:
            traceback.print_exc()
        print(f"tensortap: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tensortap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        # The user's own paths: a read-only folder, no permission, a full disk. One line
        # that names the path, like any other bad input.
        if debug:
            traceback.print_exc()
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"tensortap: error: cannot write or read{one_line(where)}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - last resort: still one line, exit 2
        if debug:
            traceback.print_exc()
        print(f"tensortap: internal error: {type(e).__name__}: {one_line(str(e))} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
