"""Judge per-stage compile captures: which stage first leaves the eager reference, and where.

Rule (torch._dynamo.utils.same): against a float64 eager reference, a stage's output
passes when ``rmse(fp64, stage) <= k * rmse(fp64, eager) + tol / 10``, with k = 2
(3 for tensors under 1000 elements or half-precision dtypes). Eager's own rounding error
is the floor, so fp32 reordering noise passes and a wrong decomposition does not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from tensortap.localize.compile_stages import STAGES, StageRuns, capture_stages
from tensortap.store.reader import Run

DEFAULT_TOL = 1e-4


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean((a.double() - b.double()) ** 2))) if a.numel() else 0.0


def same_rule(ref64: torch.Tensor, ref: torch.Tensor, res: torch.Tensor, tol: float = DEFAULT_TOL
              ) -> tuple[bool, float, float]:
    """``(passes, res_error, ref_error)`` by dynamo's fp64-relative RMSE rule."""
    if res.shape != ref.shape:
        return False, float("inf"), 0.0
    if torch.allclose(ref.double(), res.double(), atol=tol, rtol=tol):
        return True, _rmse(ref64, res), _rmse(ref64, ref)
    small = ref.numel() < 1000 or ref.dtype in (torch.float16, torch.bfloat16)
    k = 3.0 if small else 2.0
    res_err, ref_err = _rmse(ref64, res), _rmse(ref64, ref)
    return res_err <= k * ref_err + tol / 10, res_err, ref_err


@dataclass
class StageVerdict:
    stage: str
    ok: bool | None
    """None: the stage could not run or capture did not fire."""
    first_divergence: dict[str, Any] | None = None
    output_error: float | None = None
    observer_effect: float | None = None
    """max |output with capture - output without| under this stage (0: capture changed nothing)."""
    hooks_fired: bool = True
    note: str | None = None


@dataclass
class BisectResult:
    """Outcome of ``bisect_compile``."""

    first_bad_stage: str | None
    first_divergence: dict[str, Any] | None
    stages: list[StageVerdict] = field(default_factory=list)
    out: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"first_bad_stage": self.first_bad_stage, "first_divergence": self.first_divergence,
                "stages": [asdict(s) for s in self.stages], "out": self.out}

    def __str__(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _judge_stage(ref64: Run, ref: Run, res: Run, tol: float) -> dict[str, Any] | None:
    """The first record (reference execution order) that fails the rule, or None."""
    idx64 = {r.key: r for r in ref64.records()}
    idx_res = {r.key: r for r in res.records()}
    for rec in ref.records(role="output"):
        a64, b = idx64.get(rec.key), idx_res.get(rec.key)
        if a64 is None or b is None or not (rec.has_data and a64.has_data and b.has_data):
            continue
        ok, res_err, ref_err = same_rule(ref64.load(a64), ref.load(rec), res.load(b), tol)
        if not ok:
            return {"module": rec.module, "step": rec.step, "call": rec.call, "role": rec.role,
                    "path": rec.path, "res_error": res_err, "ref_error": ref_err}
    return None


def judge(runs: StageRuns, tol: float = DEFAULT_TOL) -> BisectResult:
    ref64, ref = Run(runs.reference_fp64), Run(runs.reference)
    ref_out = runs.outputs.get("reference")
    verdicts: list[StageVerdict] = []
    first_bad: str | None = None
    first_div = None
    for stage in STAGES:
        if stage in runs.errors:
            verdicts.append(StageVerdict(stage, None, note=f"failed to run: {runs.errors[stage]}"))
            if first_bad is None:
                first_bad = stage
            continue
        if stage not in runs.stages:
            continue
        fired = runs.fired.get(stage, {})
        missing = [m for m in runs.planned if not fired.get(m)]
        div = _judge_stage(ref64, ref, Run(runs.stages[stage]), tol)
        out = runs.outputs.get(stage)
        bare = runs.outputs.get(f"{stage}:bare")
        v = StageVerdict(
            stage, ok=div is None, first_divergence=div,
            output_error=float((out.double() - ref_out.double()).abs().max()) if out is not None and ref_out is not None and out.shape == ref_out.shape else None,
            observer_effect=float((out.double() - bare.double()).abs().max()) if out is not None and bare is not None and out.shape == bare.shape else None,
            hooks_fired=not missing,
        )
        if missing:
            v.note = f"hooks did not fire under this stage for {len(missing)} module(s): {', '.join(missing[:5])}"
            if div is None:
                v.ok = None
        if v.observer_effect:
            v.note = ((v.note + "; ") if v.note else "") + (
                f"capture changed the compiled output by up to {v.observer_effect:.3g} (hooks split fusions)")
        verdicts.append(v)
        if v.ok is False and first_bad is None:
            first_bad, first_div = stage, div
    return BisectResult(first_bad, first_div, verdicts, out=str(Path(runs.reference).parent))


def bisect_compile(
    model: nn.Module,
    example_args: tuple | Any,
    example_kwargs: dict | None = None,
    out: str | Path | None = None,
    stages: tuple[str, ...] = STAGES,
    modules: list[str] | None = None,
    tol: float = DEFAULT_TOL,
    progress: Callable[[str], None] | None = None,
) -> BisectResult:
    """Find the first torch.compile stage whose module outputs leave the eager reference.

    Runs ``model`` eagerly in float64 and in its dtype, then under each stage of
    ``stages`` (``eager``, ``aot_eager``, ``aot_eager_decomp_partition``, ``inductor``),
    capturing module outputs; reports the first bad stage and the first module (in
    execution order) that fails dynamo's fp64-relative rule there. Everything happens
    in this process and leaves no compiler state behind (``torch._dynamo.reset()``).
    """
    import tempfile

    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    workdir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="tensortap-bisect-"))
    runs = capture_stages(model, example_args, example_kwargs, workdir, stages, modules, progress)
    return judge(runs, tol)
