"""``tensortap localize``: which module of model B introduces the error (local vs propagated)."""

from __future__ import annotations

from rich.progress import Progress
from rich.table import Table

from tensortap.cli.common import add_command, console, err_console
from tensortap.report.records import fmt_num


def register(sub) -> None:
    p = add_command(
        sub, "localize",
        "Replay model B's modules on a reference run's inputs: local vs propagated error, and the culprit.",
        "tensortap localize runs/ref ./model-b --json",
    )
    p.add_argument("reference", metavar="RUN_REF", help="reference run (captured with inputs and outputs)")
    p.add_argument("model_dir", metavar="MODEL_DIR_B", help="the model folder to check (transformers)")
    p.add_argument("--out", help="folder for the replay runs (default: a temporary folder)")
    p.add_argument("--atol", type=float)
    p.add_argument("--rtol", type=float)
    p.add_argument("--only", metavar="REGEX", help="only modules matching this regex")
    p.add_argument("--dtype", help="load model B in this dtype")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from tensortap.localize.api import localize
    from tensortap.integrations.hf import load_model
    from tensortap.store.reader import Run

    ref = Run(args.reference)
    model, _ = load_model(args.model_dir, args.dtype)
    with Progress(console=err_console, transient=True, disable=args.json) as bar:
        task = bar.add_task("replaying modules", total=None)
        rep = localize(model, ref, out=args.out, atol=args.atol, rtol=args.rtol, only=args.only,
                       progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        print(rep.to_json())
        return rep.exit_code
    table = Table(header_style="bold", title=f"localize {args.model_dir} against {ref.path}")
    for col in ("module", "step", "call", "path", "local", "propagated", "amplification", "status"):
        table.add_column(col, overflow="fold")
    for r in rep.rows:
        status = r.skipped and f"skipped: {r.skipped}" or r.local_status or "-"
        is_culprit = rep.culprit and (r.module, r.step, r.call, r.path) == (
            rep.culprit["module"], rep.culprit["step"], rep.culprit["call"], rep.culprit["path"])
        style = "bold red" if is_culprit else ("red" if r.local_status == "diverged" else "")
        table.add_row(r.module or "<root>", str(r.step), str(r.call), r.path or "-", fmt_num(r.local),
                      fmt_num(r.propagated), fmt_num(r.amplification), status, style=style)
    console.print(table)
    for n in rep.notes:
        console.print(f"[yellow]note:[/yellow] {n}", highlight=False)
    if rep.culprit:
        console.print(f"[bold red]CULPRIT[/bold red] {rep.culprit['message']}", highlight=False)
    else:
        console.print("[bold green]NO CULPRIT[/bold green]: every replayed module agrees with the reference "
                      "on the reference's inputs", highlight=False)
    return rep.exit_code
