"""``tensortap convert``: write another tool's dump (or a run) as a native tensortap run."""

from __future__ import annotations

from tensortap.cli.common import add_command, console
from tensortap.cli.sources import add_open_options, open_source


def register(sub) -> None:
    p = add_command(sub, "convert",
                    "Convert a dump of another tool (vLLM intermediate logging, vLLM/SGLang pass dump, "
                    "SGLang dumper, transformers debugger) into a native tensortap run.",
                    "tensortap convert /tmp/vllm_intermediates/010fed05-4a36 runs/vllm-a")
    p.add_argument("src", metavar="SRC", help="the dump (layout detected unless --format)")
    p.add_argument("dst", metavar="DST", help="the run directory to write (must not exist or be empty)")
    add_open_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is a tensortap run")
    p.set_defaults(func=run)


def run(args) -> int:
    from tensortap.store.importers.base import ImportedRun
    from tensortap.store.importers.convert import convert_run
    src = open_source(args.src, args)
    out = convert_run(src, args.dst, overwrite=args.overwrite)
    fmt = src.format_name if isinstance(src, ImportedRun) else "native"
    console.print(f"wrote {out['run']}: {out['records']} record(s), {out['tensors']} tensor(s), "
                  f"{out['bytes']} bytes, from {fmt} {src.path} ({out['status']})", highlight=False)
    for w in src.problems:
        console.print(f"problem: {w}", highlight=False, markup=False)
    return 0
