"""``tensortap capture``: run a model folder under capture."""

from __future__ import annotations

from pathlib import Path

from tensortap.cli.common import add_command, console, parse_steps
from tensortap.errors import TensortapError
from tensortap.integrations.registry import ENGINES, capture_engines, capture_function, engine


def register(sub) -> None:
    p = add_command(
        sub, "capture", "Run a model folder (transformers or vLLM) on prompts and capture its tensors.",
        "tensortap capture ./tiny-llama --out runs/a --prompt 'Paris is the capital of' "
        "--max-new-tokens 3 --modules 'layers\\.1\\.' lm_head --steps 0,1",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local HF-format model folder")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--engine", choices=capture_engines(), default="hf",
                   help="; ".join(f"{n}: {ENGINES[n].summary}" for n in capture_engines()))
    p.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                   help="a prompt (repeat for a batch); default: two built-in prompts")
    p.add_argument("--max-new-tokens", type=int, default=3)
    p.add_argument("--config", help="capture config: inline JSON or a JSON/YAML file")
    p.add_argument("--modules", nargs="+", metavar="REGEX", help="module name regexes (optional :i call suffix)")
    p.add_argument("--layers", help="decoder layer indices, e.g. 0,1")
    p.add_argument("--steps", help="steps to record, e.g. 0,1 or 0-3")
    p.add_argument("--skip-steps", type=int, help="skip this many first steps")
    p.add_argument("--roles", nargs="+", choices=["inputs", "outputs"])
    p.add_argument("--max-numel", type=int, help="keep only stats for tensors with more elements")
    p.add_argument("--mode", choices=["full", "stats"])
    p.add_argument("--dtype", help="load the model in this dtype (float32, bfloat16, float16)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                   help="vLLM only: tensor-parallel ranks (each writes rank-<r>/; on CPU also set "
                        "VLLM_CPU_OMP_THREADS_BIND, e.g. '0|1')")
    p.add_argument("--model-impl", choices=["auto", "vllm", "transformers"], default=None,
                   help="vLLM only: the model implementation (transformers: vLLM's Transformers "
                        "backend, transformers module names inside vLLM)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="error if a planned module never fired")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing run in --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from tensortap.capture.config import build_config
    from tensortap.capture.session import check_out_dir
    if args.max_new_tokens < 1:
        raise TensortapError("--max-new-tokens must be >= 1")
    cfg = build_config(
        args.config, source="--config", out=args.out, modules=args.modules,
        layers=parse_steps(args.layers), steps=parse_steps(args.steps), skip_steps=args.skip_steps,
        roles=args.roles, max_numel=args.max_numel, mode=args.mode, strict=args.strict,
        overwrite=args.overwrite,
    )
    # Fail before loading the model (which can take minutes) if --out is unusable.
    check_out_dir(Path(cfg.out), cfg.overwrite)
    adapter = engine(args.engine)
    extra = {}
    if args.tensor_parallel_size < 1:
        raise TensortapError("--tensor-parallel-size must be >= 1")
    if args.tensor_parallel_size != 1:
        if "tensor_parallel_size" not in adapter.capture_options:
            able = [n for n, e in ENGINES.items() if "tensor_parallel_size" in e.capture_options]
            raise TensortapError(f"--tensor-parallel-size needs --engine {' or '.join(able) or '(none)'}")
        extra["tensor_parallel_size"] = args.tensor_parallel_size
    if args.model_impl is not None:
        if "model_impl" not in adapter.capture_options:
            able = [n for n, e in ENGINES.items() if "model_impl" in e.capture_options]
            raise TensortapError(f"--model-impl needs --engine {' or '.join(able) or '(none)'}")
        extra["model_impl"] = args.model_impl
    capture_generate = capture_function(args.engine)
    result = capture_generate(args.model_dir, cfg, prompts=args.prompts,
                              max_new_tokens=args.max_new_tokens, dtype=args.dtype, **extra)
    from tensortap.api import open as open_run

    run_ = open_run(result["run"])
    for i, text in enumerate(result["texts"]):
        console.print(f"[bold]prompt {i}[/bold] → {text!r}", highlight=False)
    console.print(f"captured {len(run_)} records over {len(run_.steps())} step(s) into "
                  f"[bold]{run_.path}[/bold] ({run_.status})", highlight=False)
    if run_.warnings:
        # The capture session printed each warning on stderr as it finished.
        console.print(f"[yellow]{len(run_.warnings)} warning(s)[/yellow] (printed above; also in run.json)",
                      highlight=False)
    return 0 if run_.status == "complete" else 2
