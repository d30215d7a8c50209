"""``tensortap vllm-ladder``: which piece of vLLM's compile stack changes the numbers.

Exit codes: 0 every rung agrees with eager, 1 a rung differs, 2 usage error or a rung failed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tensortap.cli.common import add_command, console, err_console
from tensortap.errors import ConfigError
from tensortap.integrations.vllm.ladder.rungs import RUNGS


def register(sub) -> None:
    p = add_command(
        sub, "vllm-ladder",
        "Run the same prompts through vLLM configurations from fully eager to the default "
        "(compile, Inductor, compile cache, CUDA graphs), each in a fresh engine process; compare "
        "every rung with eager (tokens, logprobs, intermediate anchors) and name the smallest set "
        "of switches that changes the result (exit 0 agree, 1 a rung differs, 2 error).",
        "tensortap vllm-ladder ./model --prompt 'Paris is' --prompt 'The fox' --max-new-tokens 8 "
        "--dtype float32 --out runs/ladder --html ladder.html\n"
        "  tensortap vllm-ladder ./model --prompt 'Hi' --rungs eager,compile-no-inductor,compile",
    )
    p.add_argument("model", metavar="MODEL", help="model folder vLLM can load")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=8, metavar="N",
                   help="greedy tokens generated per prompt (default 8)")
    p.add_argument("--out", default="runs/ladder", metavar="DIR",
                   help="folder for every rung's result, log, TORCH_TRACE and capture (default runs/ladder)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous ladder in --out")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("--rungs", metavar="A,B,...",
                   help=f"rungs to run ({', '.join(RUNGS)}); default: all this machine can run "
                        "(GPU-only rungs are listed as not available on CPU). eager is always included")
    p.add_argument("--dtype", metavar="DTYPE",
                   help="engine dtype (float32 for an fp32 model; vLLM's auto picks bfloat16 on CPU)")
    p.add_argument("--max-model-len", type=int, metavar="N", help="vLLM max_model_len (less KV-cache memory)")
    p.add_argument("--no-capture", action="store_true",
                   help="compare tokens and logprobs only (no taps in the engine, vLLM's cache untouched by them)")
    p.add_argument("--logprob-atol", type=float, metavar="X",
                   help="largest logprob difference counted as equal (default by dtype: 1e-4 for float32)")
    p.add_argument("--compilation-config", metavar="JSON",
                   help="extra vLLM CompilationConfig fields for every compiled rung, e.g. "
                        "'{\"pass_config\": {...}}' or '{\"inductor_passes\": {\"post_grad_custom_post_pass\": "
                        "\"mymod.my_pass\"}}'")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="debugging aid: import MODULE in every rung's process before the engine is built "
                        "(register a custom op or Inductor decomposition; repeatable)")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S", help="per-rung time limit (default 900 s)")
    p.set_defaults(func=run)


class _RichProgress:
    """Shows which rung runs, what it is doing, and how long it has taken."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.label = ""

    def rung_started(self, rung, index: int, total: int) -> None:
        self.label = f"[{index}/{total}] {rung.name}"
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"{escape(self.label)}: starting", total=None)

    def phase(self, rung, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"{escape(self.label)}: {escape(text.strip())}")

    def rung_finished(self, outcome) -> None:
        status = {"differs": "[red]differs[/red]", "agree": "[green]agrees[/green]",
                  "reference": "[cyan]reference done[/cyan]", "error": "[yellow]failed[/yellow]",
                  "unavailable": "[dim]not available here[/dim]"}.get(outcome.status, outcome.status)
        took = f" in {outcome.time_s:.1f} s" if outcome.time_s else ""
        self.progress.console.print(f"  {escape(outcome.rung.name)}: {status}{took}")


def _compilation_config(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--compilation-config: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError("--compilation-config must be a JSON object of CompilationConfig fields")
    return value


def run(args) -> int:
    from tensortap.integrations.vllm.ladder.api import run_ladder
    from tensortap.integrations.vllm.ladder.report import render

    comp = _compilation_config(args.compilation_config)
    started = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        result = run_ladder(
            args.model, args.prompt, args.max_new_tokens, out=args.out, rungs=args.rungs, dtype=args.dtype,
            capture=not args.no_capture, max_model_len=args.max_model_len, compilation_config=comp,
            imports=args.imports, logprob_atol=args.logprob_atol, timeout_s=args.timeout,
            overwrite=args.overwrite, html=args.html, progress=_RichProgress(progress))
    if args.json:
        print(result.to_json())
    else:
        console.print(render(result))
        if args.html:
            console.print(f"HTML report: {escape(str(args.html))}", highlight=False)
    err_console.print(f"[dim]ladder finished in {time.perf_counter() - started:.1f} s[/dim]")
    return result.exit_code
