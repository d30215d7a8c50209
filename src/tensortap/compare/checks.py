"""Checks before comparing: are these runs of one model on the same inputs, are they whole?

Runs of different models or different prompts cannot be compared meaningfully: every
tensor would differ and the "first divergence" would be noise. Those are errors
(``--force`` turns them into warnings). Incomplete runs and unreadable manifest lines
are warnings here; the verdict then refuses to say "agree" (see api.py).
"""

from __future__ import annotations

from typing import Any

from tensortap.integrations.registry import engine_name
from tensortap.errors import TensortapError, one_line
from tensortap.store.reader import Run

# Config fields that define a model's structure. dtype, names and paths are left out:
# a bf16 rerun or a copy of the folder elsewhere is still the same model.
STRUCTURE_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "intermediate_size", "vocab_size", "head_dim", "num_experts")


def _config(run: Run) -> dict[str, Any]:
    model = run.info.get("model")
    cfg = model.get("config") if isinstance(model, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def model_differences(run_a: Run, run_b: Run) -> list[str]:
    """Structural config fields (and, for one engine, the model class) that differ."""
    ca, cb = _config(run_a), _config(run_b)
    diffs = [f"{k} {ca[k]!r} vs {cb[k]!r}" for k in STRUCTURE_KEYS if k in ca and k in cb and ca[k] != cb[k]]
    ma, mb = run_a.info.get("model"), run_b.info.get("model")
    if engine_name(run_a) == engine_name(run_b) and isinstance(ma, dict) and isinstance(mb, dict) \
            and ma.get("class") and mb.get("class") and ma.get("class") != mb.get("class"):
        diffs.insert(0, f"model class {ma.get('class')} vs {mb.get('class')}")
    return diffs


def _token_map(table: Any) -> dict[tuple[int, int], int]:
    if not isinstance(table, dict):
        return {}
    req, pos, ids = table.get("request"), table.get("position"), table.get("token_ids")
    if not all(isinstance(x, list) for x in (req, pos, ids)) or not len(req) == len(pos) == len(ids):
        return {}
    return {(r, p): t for r, p, t in zip(req, pos, ids) if isinstance(r, int) and r >= 0}


def _first_token_difference(ta: dict, tb: dict) -> str | None:
    if set(ta) != set(tb):
        only = sorted(set(ta) ^ set(tb))[:1]
        return f"different tokens/lengths ({len(ta)} vs {len(tb)} tokens; e.g. request {only[0][0]} position {only[0][1]})"
    for key in sorted(ta):
        if ta[key] != tb[key]:
            return f"request {key[0]} position {key[1]} has token {ta[key]} in A, {tb[key]} in B"
    return None


def input_differences(run_a: Run, run_b: Run) -> tuple[str | None, str | None]:
    """``(prompt difference, later generated-token difference)``, each a message or None."""
    ea, eb = run_a.info.get("engine"), run_b.info.get("engine")
    pa = ea.get("prompts") if isinstance(ea, dict) else None
    pb = eb.get("prompts") if isinstance(eb, dict) else None
    if isinstance(pa, list) and isinstance(pb, list) and pa != pb:
        return f"different prompts ({one_line(repr(pa), 120)} vs {one_line(repr(pb), 120)})", None
    prompt_diff = later = None
    for rank in sorted(set(run_a.ranks) & set(run_b.ranks)) or [0]:
        for step in sorted(set(run_a.steps()) & set(run_b.steps())):
            ta, tb = _token_map(run_a.tokens(step, rank)), _token_map(run_b.tokens(step, rank))
            if not ta or not tb:
                continue
            why = _first_token_difference(ta, tb)
            if why is None:
                continue
            if step == 0:
                prompt_diff = prompt_diff or f"step 0 (the prompt): {why}"
            elif later is None:
                later = f"generated tokens differ from step {step} on ({why}); later steps compare different inputs"
            break
    return prompt_diff, later


def run_notes(run: Run, name: str) -> list[str]:
    """Warnings about one run: incomplete, unreadable manifest lines, capture warnings."""
    out = []
    if run.status != "complete":
        out.append(f"run {name} is incomplete ({one_line(run.reason or 'unknown reason', 300)}): "
                   "records it never wrote cannot be compared")
    run.records()  # reads the manifests, which fills run.problems
    if run.problems:
        out.append(f"run {name}: {len(run.problems)} unreadable manifest line(s), not compared "
                   f"(first: {one_line(run.problems[0], 200)})")
    for w in run.warnings:
        out.append(f"run {name} capture warning: {one_line(w, 300)}")
    return out


def gaps(runs: dict[str, Run | None]) -> list[str]:
    """Short reasons why a run may lack records (for the verdict): incomplete, unreadable lines."""
    out = []
    for name, run in runs.items():
        if run is None:
            continue
        if run.status != "complete":
            out.append(f"run {name} is incomplete ({one_line(run.reason or 'unknown reason', 200)})")
        if run.problems:
            out.append(f"run {name} has {len(run.problems)} unreadable manifest line(s)")
    return out


def preflight(run_a: Run, run_b: Run, run_c: Run | None, force: bool) -> list[str]:
    """Raise for incomparable runs (unless ``force``); return warnings to put in the report."""
    warnings: list[str] = []
    for other, name in ((run_b, "B"), (run_c, "floor")):
        if other is None:
            continue
        diffs = model_differences(run_a, other)
        if diffs:
            msg = f"runs A and {name} come from different models: {'; '.join(diffs[:3])}"
            if not force:
                raise TensortapError(msg + "; compare runs of one model, or pass --force to compare anyway")
            warnings.append(msg)
    prompt_diff, later = input_differences(run_a, run_b)
    if prompt_diff:
        msg = f"runs A and B were given different inputs: {prompt_diff}"
        if not force:
            raise TensortapError(msg + "; capture both with the same prompts, or pass --force to compare anyway")
        warnings.append(msg)
    if later:
        warnings.append(later)
    warnings += run_notes(run_a, "A") + run_notes(run_b, "B")
    if run_c is not None:
        warnings += run_notes(run_c, "floor")
    return warnings
