"""``tensortap demo``: the embedded showcase on a tiny model built on the fly.

It builds a tiny Llama, captures it (run A), builds a copy with one weight perturbed
(the planted bug), captures that (run B) with the same prompts, and diffs the two: the
diff must name the perturbed module as the first divergence. Exit 0 when it does.
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from tensortap.cli.common import EXIT_DIVERGED, EXIT_OK, add_command, console
from tensortap.errors import one_line
from tensortap.report.records import records_table

PLANTED = "model.layers.1.mlp.down_proj.weight"
PLANTED_MODULE = PLANTED.rsplit(".", 1)[0]
DELTA = 0.01
"""Added to every element of the planted weight (its elements have std ~0.06)."""


def register(sub) -> None:
    p = add_command(sub, "demo", "Build a tiny Llama, capture it and a copy with a planted bug, and diff them.",
                    "tensortap demo --dir ./tensortap-demo")
    p.add_argument("--dir", default="tensortap-demo", help="work folder for the models, runs and report")
    p.set_defaults(func=run)


def run(args) -> int:
    from tensortap.capture.config import build_config
    from tensortap.api import open as open_run
    from tensortap.compare.api import diff
    from tensortap.integrations.hf import capture_generate
    from tensortap.report.diff_table import diff_table, limit_rows, select_rows, verdict_text
    from tensortap.testing import tiny_llama

    work = Path(args.dir)
    prompts = ["Paris is the capital of", "The quick brown fox"]
    with console.status("building the tiny model (seeded random weights, tokenizer trained on the fly)…"):
        model_dir = tiny_llama(work / "tiny-llama")
    with console.status("capturing run A (every module, 3 generation steps)…"):
        res_a = capture_generate(model_dir, build_config(out=str(work / "runs" / "a"), overwrite=True),
                                 prompts=prompts, max_new_tokens=3)
    run_a = open_run(res_a["run"])
    console.print(records_table(run_a.records(module=r"layers\.1\.(mlp|self_attn)$", step=0),
                                title="run A, step 0, layer 1 (tensortap ls runs/a --module ...)"))
    console.print(f"run A: {len(run_a)} records, steps {run_a.steps()}, status {run_a.status} → "
                  f"{escape(str(run_a.path))}", highlight=False)

    with console.status(f"building a copy with a planted bug: {PLANTED} += {DELTA}…"):
        bug_dir = tiny_llama(work / "tiny-llama-bug", perturb={PLANTED: DELTA})
    with console.status("capturing run B (same prompts)…"):
        res_b = capture_generate(bug_dir, build_config(out=str(work / "runs" / "b"), overwrite=True),
                                 prompts=prompts, max_new_tokens=3)
    console.print(f"run B: the same model with {PLANTED} += {DELTA} → {escape(res_b['run'])}", highlight=False)

    with console.status("diffing run A against run B…"):
        report = diff(res_a["run"], res_b["run"])
    rows, more = limit_rows(select_rows(report, context=2), 12)
    console.print(diff_table(report, rows, title="tensortap diff runs/a runs/b (the interesting part)", more=more))
    console.print(verdict_text(report))
    html = report.to_html(work / "report.html")
    console.print(f"HTML report: {escape(one_line(str(html.resolve())))}", highlight=False)
    console.print(f"JSON: tensortap diff {escape(res_a['run'])} {escape(res_b['run'])} --json", highlight=False)

    fd = report.first_divergence
    if fd is not None and fd.module == PLANTED_MODULE and fd.role == "output":
        console.print(f"[bold green]found the planted bug:[/] the first divergence is {escape(PLANTED_MODULE)} "
                      f"(step {fd.step}), {escape(fd.origin or '')}", highlight=False)
        return EXIT_OK
    where = escape(one_line(fd.message)) if fd else "nowhere"
    console.print(f"[bold red]the diff did not find the planted bug in {escape(PLANTED_MODULE)}[/]; "
                  f"first divergence: {where}", highlight=False)
    return EXIT_DIVERGED
