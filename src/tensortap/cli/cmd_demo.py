"""``tensortap demo``: the embedded showcase on a tiny model built on the fly."""

from __future__ import annotations

from pathlib import Path

from tensortap.capture.config import build_config
from tensortap.cli.common import add_command, console
from tensortap.report.records import records_table

PLANTED = "model.layers.1.mlp.down_proj.weight"


def register(sub) -> None:
    p = add_command(sub, "demo", "Build a tiny Llama, capture it, and show what tensortap records.",
                    "tensortap demo --dir ./tensortap-demo")
    p.add_argument("--dir", default="tensortap-demo", help="work folder for the model and runs")
    p.set_defaults(func=run)


def run(args) -> int:
    from tensortap.api import open as open_run
    from tensortap.integrations.hf import capture_generate
    from tensortap.testing import tiny_llama

    work = Path(args.dir)
    with console.status("building the tiny model (seeded random weights, tokenizer trained on the fly)…"):
        model_dir = tiny_llama(work / "tiny-llama")
    prompts = ["Paris is the capital of", "The quick brown fox"]
    with console.status("capturing run A (every module, 3 generation steps)…"):
        res = capture_generate(model_dir, build_config(out=str(work / "runs" / "a"), overwrite=True),
                               prompts=prompts, max_new_tokens=3)
    run_a = open_run(res["run"])
    console.print(records_table(run_a.records(module=r"layers\.1\.(mlp|self_attn)$", step=0),
                                title="run A, step 0, layer 1 (tensortap ls runs/a --module ...)"))
    console.print(f"run A: {len(run_a)} records, steps {run_a.steps()}, status {run_a.status} → {run_a.path}",
                  highlight=False)
    return 0
