"""Capture a model under each torch.compile stage, plus eager and float64 references.

Stages, in the order the compiler applies them (as PyTorch's CompilerBisector walks them):
``eager`` (Dynamo tracing, no compilation), ``aot_eager`` (AOTAutograd graphs run
eagerly), ``aot_eager_decomp_partition`` (plus Inductor's decompositions and
partitioning), ``inductor`` (generated kernels). A bug that first shows at a stage was
introduced by what that stage adds.

This module only produces runs; tensortap.localize.bisect judges them (with diff).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from tensortap.capture.config import build_config
from tensortap.capture.session import CaptureSession

STAGES = ("eager", "aot_eager", "aot_eager_decomp_partition", "inductor")


@dataclass
class StageRuns:
    """Run directories produced for one bisection, and what could not run."""

    reference_fp64: Path
    reference: Path
    stages: dict[str, Path] = field(default_factory=dict)
    uncaptured: dict[str, Path] = field(default_factory=dict)
    """The same stage run without hooks: its final output shows whether capture changed it."""
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Final output per stage with capture, ``"<stage>:bare"`` without."""
    errors: dict[str, str] = field(default_factory=dict)
    fired: dict[str, dict[str, int]] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)


def _to_fp64(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(torch.float64) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_fp64(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_fp64(v) for k, v in obj.items()}
    return obj


def _first_tensor(obj: Any) -> torch.Tensor | None:
    from tensortap.capture.flatten import flatten

    for _, v in flatten(obj):
        if isinstance(v, torch.Tensor):
            return v.detach().to("cpu").clone()
    return None


def _captured(model: nn.Module, fn: Callable[[], Any], out: Path, modules: list[str] | None,
              engine: dict) -> tuple[Any, dict[str, int], list[str]]:
    cfg = build_config(out=str(out), modules=modules or None, roles=["outputs"], overwrite=True,
                       durable=False)
    session = CaptureSession(model, cfg, engine=engine)
    with session, torch.no_grad():
        result = fn()
    return result, dict(session.fired), [p.name for p in session.planned]


def capture_stages(
    model: nn.Module,
    args: tuple,
    kwargs: dict | None,
    out: str | Path,
    stages: tuple[str, ...] = STAGES,
    modules: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> StageRuns:
    """Run ``model(*args, **kwargs)`` eagerly (in its dtype and in float64) and under each
    compile stage, capturing module outputs into ``out/<name>``."""
    out = Path(out)
    kwargs = kwargs or {}
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        from tensortap.errors import ConfigError

        raise ConfigError(f"unknown compile stage(s) {unknown}; valid: {', '.join(STAGES)}")
    say = progress or (lambda _msg: None)
    model = model.eval()
    ref64 = copy.deepcopy(model).to(torch.float64)
    say("float64 eager reference")
    _captured(ref64, lambda: ref64(*_to_fp64(args), **_to_fp64(kwargs)), out / "reference-fp64",
              modules, {"name": "torch", "stage": "reference-fp64"})
    say("eager reference")
    result, fired, planned = _captured(model, lambda: model(*args, **kwargs), out / "reference", modules,
                                       {"name": "torch", "stage": "reference"})
    runs = StageRuns(out / "reference-fp64", out / "reference", planned=planned)
    runs.outputs["reference"] = _first_tensor(result)
    runs.fired["reference"] = fired
    for stage in stages:
        say(f"stage {stage}")
        torch._dynamo.reset()
        try:
            _run_stage(model, args, kwargs, out, stage, modules, runs)
        except Exception as e:  # noqa: BLE001 - a stage that fails to compile is a finding
            runs.errors[stage] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        finally:
            torch._dynamo.reset()
    return runs


def _refresh_decomposition_table() -> None:
    """Inductor memoizes its decomposition table on first use; decompositions registered
    after that (a plugin, a test) would otherwise be ignored by later compiles."""
    try:
        from torch._inductor import decomposition

        cached = getattr(decomposition, "fast_random_decomps", None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
    except ImportError:
        pass


def _run_stage(model: nn.Module, args: tuple, kwargs: dict, out: Path, stage: str,
               modules: list[str] | None, runs: StageRuns) -> None:
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    # The FX graph and AOTAutograd caches key on the graph, not on registered
    # decompositions, so a cached kernel from an earlier compile would hide the very
    # change being bisected.
    with inductor_config.patch({"fx_graph_cache": False}), \
            functorch_config.patch({"enable_autograd_cache": False}):
        _refresh_decomposition_table()
        compiled = torch.compile(model, backend=stage)
        with torch.no_grad():
            runs.outputs[f"{stage}:bare"] = _first_tensor(compiled(*args, **kwargs))
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=stage)
        result, fired, _ = _captured(model, lambda: compiled(*args, **kwargs), out / stage, modules,
                                     {"name": "torch", "stage": stage})
    runs.stages[stage] = out / stage
    runs.outputs[stage] = _first_tensor(result)
    runs.fired[stage] = fired
