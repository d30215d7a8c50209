"""Run model B end to end on the reference's recorded root inputs, under capture.

This gives B's own run on the reference's exact inputs (its *propagated* error when
diffed against the reference), without needing B's original prompts or engine. Steps
whose root inputs cannot be re-created (a KV cache after step 0) are not run.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from tensortap.capture.config import build_config
from tensortap.capture.session import CaptureSession
from tensortap.localize.rebuild import NotReplayable, move_floating, rebuild_call, recreate_value
from tensortap.store.reader import Run


def capture_on_reference_inputs(model: nn.Module, reference: Run, out: str | Path,
                                overwrite: bool = False) -> tuple[Run, dict[int, str]]:
    """Capture ``model`` (same module filters as the reference) on each replayable step's
    root inputs. Returns the run and ``{step: why it was not run}``."""
    cap = reference.info.get("capture") or {}
    modules = cap.get("modules") if isinstance(cap, dict) else None
    roots = reference.records(module="^$", role="input")
    steps = sorted({r.step for r in roots})
    skipped: dict[int, str] = {}
    calls: list[tuple[int, tuple, dict]] = []
    for step in steps:
        try:
            inputs = {}
            for rec in (r for r in roots if r.step == step and r.call == 0):
                if rec.kind == "value":
                    inputs[rec.path] = recreate_value(rec.value, step)
                elif rec.has_data:
                    inputs[rec.path] = reference.load(rec)
                else:
                    raise NotReplayable(f"root input {rec.path} stored as statistics only")
            args, kwargs = rebuild_call(inputs)
            calls.append((step, args, kwargs))
        except NotReplayable as e:
            skipped[step] = str(e)
    if not roots:
        skipped[-1] = "the reference recorded no root-module inputs (capture with modules including '^$')"
    device, dtype = next(((p.device, p.dtype) for p in model.parameters() if p.is_floating_point()),
                         (torch.device("cpu"), None))
    cfg = build_config(out=str(out), modules=modules or None, overwrite=overwrite, durable=False)
    session = CaptureSession(model, cfg, engine={"name": (reference.info.get("engine") or {}).get("name", "torch"),
                                                 "replay_of": str(reference.path), "root_replay": True})
    rank = reference.ranks[0] if reference.ranks else 0
    with session, torch.inference_mode():
        for step, args, kwargs in calls:
            session.set_next_step(step)
            # Same inputs as the reference, so the same token rows (padding left out in diffs).
            table = reference.tokens(step, rank)
            if isinstance(table, dict):
                session.add_tokens(step, {k: v for k, v in table.items() if k != "step"})
            model(*move_floating(args, device, dtype), **move_floating(kwargs, device, dtype))
    return Run(out), skipped
