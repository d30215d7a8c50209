"""``tt.localize``: split each module's error into local (its own) and propagated (carried in).

Local error: model B's module run on the reference's recorded inputs, compared with the
reference's recorded outputs (tensortap.localize.replay). Propagated error: model B run
end to end on the reference's root inputs, compared with the reference (a plain diff).
The culprit is the first module, in the reference's execution order, whose local error
exceeds tolerance; modules after it typically show propagated error with small local
error. Modules that could not be replayed are listed with the reason and are never
counted as clean.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from tensortap.compare.api import diff
from tensortap.compare.result import DiffRow, _finite
from tensortap.localize.replay import replay_run
from tensortap.localize.root_replay import capture_on_reference_inputs
from tensortap.errors import TensortapError
from tensortap.store.reader import Run


@dataclass
class LocalizeRow:
    module: str
    step: int
    call: int
    path: str
    local: float | None
    """rel_l2 of B's module output vs the reference, on the reference's inputs."""
    propagated: float | None
    """rel_l2 of B's end-to-end output vs the reference."""
    amplification: float | None
    """propagated error at this output / propagated error at its inputs."""
    local_status: str | None
    local_limit: float | None = None
    skipped: str | None = None


@dataclass
class LocalizeReport:
    """Result of ``tt.localize``."""

    culprit: dict[str, Any] | None
    rows: list[LocalizeRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    replay_run: str | None = None
    propagated_run: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.culprit else 0

    def to_dict(self) -> dict[str, Any]:
        # JSON has no Infinity: an amplification of inf (error from clean inputs) becomes null.
        return {"culprit": self.culprit and {k: _finite(v) for k, v in self.culprit.items()},
                "rows": [{k: _finite(v) for k, v in asdict(r).items()} for r in self.rows],
                "skipped": self.skipped, "notes": self.notes,
                "replay_run": self.replay_run, "propagated_run": self.propagated_run}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=str)


def _key(r: DiffRow) -> tuple:
    return (r.step, r.module, r.call, r.path)


def localize(
    model_b: nn.Module,
    reference: str | Path | Run,
    *,
    out: str | Path | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    only: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LocalizeReport:
    """Find the first module of ``model_b`` whose own (local) error exceeds tolerance.

    ``reference`` is a run captured from the reference model with inputs and outputs.
    Work runs go to ``out`` (default: a temporary folder), as ``replay/`` and ``propagated/``.
    """
    ref = reference if isinstance(reference, Run) else Run(reference)
    engine = (ref.info.get("engine") or {}).get("name") if isinstance(ref.info, dict) else None
    if engine == "vllm":
        # vLLM's modules take vLLM's own arguments (flattened tokens, attention metadata,
        # a KV cache): a transformers module cannot be called on them.
        raise TensortapError(f"{ref.path}: localize needs a reference captured with transformers or "
                             "plain PyTorch (its module calls are replayed on model B); this run is from "
                             "vLLM: capture the reference with --engine hf, or compare the vLLM run with "
                             "`tensortap diff`")
    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="tensortap-localize-"))
    work.mkdir(parents=True, exist_ok=True)
    keep = None
    if only:
        import re

        try:
            pattern = re.compile(only)
        except (re.error, OverflowError, RecursionError) as e:
            raise TensortapError(f"invalid --only regex {only!r} (only=): {e}") from None
        keep = lambda name: pattern.search(name) is not None  # noqa: E731
    rep_run = replay_run(model_b, ref, work / "replay", modules=keep, overwrite=True, progress=progress)
    skipped: dict[str, str] = dict((rep_run.info.get("replay") or {}).get("skipped") or {})
    local = diff(ref, rep_run, mapping="none", atol=atol, rtol=rtol, only=only, force=True)
    prop_run, prop_skipped = capture_on_reference_inputs(model_b, ref, work / "propagated", overwrite=True)
    notes = [f"step {s}: end-to-end replay not run ({why})" for s, why in sorted(prop_skipped.items())]
    propagated = None
    if len(prop_run):
        propagated = diff(ref, prop_run, mapping="none", atol=atol, rtol=rtol, only=only, force=True)
    prop_rows = {_key(r): r for r in (propagated.rows if propagated else []) if r.role == "output"}
    rows: list[LocalizeRow] = []
    culprit = None
    for r in local.rows:
        if r.role != "output":
            continue
        p = prop_rows.get(_key(r))
        row = LocalizeRow(r.module, r.step, r.call, r.path, r.rel_l2, p.rel_l2 if p else None,
                          p.amplification if p else None, r.status, r.limit)
        rows.append(row)
        if culprit is None and r.status == "diverged":
            culprit = {"module": r.module, "step": r.step, "call": r.call, "path": r.path,
                       "local": r.rel_l2, "limit": r.limit,
                       "propagated": row.propagated, "message": f"{r.name}: local rel_l2 "
                       f"{r.rel_l2:.3g} > limit {r.limit:.3g} on the reference's own inputs"}
    for label, why in skipped.items():
        name, _, rest = label.rpartition("@")
        step, _, call = rest.partition(":")
        mod = "" if name == "<root>" else name
        rows.append(LocalizeRow(mod, int(step), int(call), "", None,
                                None, None, None, skipped=why))
    if skipped:
        notes.append(f"{len(skipped)} module call(s) could not be replayed (listed with reasons); "
                     "they are not counted as clean")
    return LocalizeReport(culprit, rows, skipped, notes, str(work / "replay"), str(work / "propagated"))
