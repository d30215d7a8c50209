"""Replay: run model B's modules on the inputs recorded in a reference run.

For each (step, module, call) whose inputs the reference recorded, the module of the
same name in model B runs on exactly those inputs; its outputs are written to a new run
with the reference's keys. Diffing that run against the reference gives each module's
*local* error (what it adds by itself), free of error carried in from upstream.
Modules that cannot be replayed are listed with the reason, never reported as clean.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from tensortap.version import __version__
from tensortap.capture.flatten import flatten
from tensortap.capture.session import model_description, prepare_out_dir
from tensortap.localize.rebuild import NotReplayable, move_floating, rebuild_call, recreate_value
from tensortap.store import format as fmt
from tensortap.store.jsonio import atomic_write_json
from tensortap.store.reader import Run
from tensortap.store.stats import checksum, tensor_stats
from tensortap.store.writer import RankWriter


def _param_placement(module: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    for b in module.buffers():
        return b.device, None
    return torch.device("cpu"), None


def _copy_tokens(reference: Run, writer: RankWriter, steps: list[int]) -> None:
    """The replay sees the reference's own inputs, so it has the reference's token rows:
    the diff then aligns rows and leaves padding out exactly as for the reference."""
    rank = reference.ranks[0] if reference.ranks else 0
    for step in steps:
        table = reference.tokens(step, rank)
        if isinstance(table, dict):
            writer.append_tokens({**table, "step": step})


def replay_run(
    model: nn.Module,
    reference: Run,
    out: str | Path,
    modules: Callable[[str], bool] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Run:
    """Write a run holding model's module outputs computed on ``reference``'s inputs.

    ``run.info["replay"]["skipped"]`` maps ``"module@step:call"`` to why it was not replayed.
    """
    out = Path(out)
    lock = prepare_out_dir(out, overwrite)
    try:
        return _replay(model, reference, out, modules, progress)
    finally:
        lock.release()


def _replay(model: nn.Module, reference: Run, out: Path, modules: Callable[[str], bool] | None,
            progress: Callable[[int, int], None] | None) -> Run:
    named = dict(model.named_modules())
    calls: dict[tuple[int, str, int], dict[str, Any]] = defaultdict(dict)
    has_output: set[tuple[int, str, int]] = set()
    order: list[tuple[int, str, int]] = []
    for rec in reference.records(rank=reference.ranks[0] if reference.ranks else 0):
        key = (rec.step, rec.module, rec.call)
        if modules is not None and not modules(rec.module):
            continue
        if rec.role == "input":
            calls[key][rec.path] = rec
        else:
            if key not in has_output:
                order.append(key)
            has_output.add(key)
    skipped: dict[str, str] = {}
    writer = RankWriter(out, 0, durable=False)
    _copy_tokens(reference, writer, sorted({k[0] for k in order}))
    seq = 0
    started = time.time()
    for i, key in enumerate(order):
        if progress:
            progress(i, len(order))
        step, name, call = key
        label = f"{name or '<root>'}@{step}:{call}"
        module = named.get(name)
        if module is None:
            skipped[label] = f"model B has no module named {name!r}"
            continue
        if key not in calls:
            skipped[label] = "the reference recorded no inputs for this call (roles=outputs?)"
            continue
        try:
            inputs = {}
            for path, rec in calls[key].items():
                if rec.kind == "value":
                    inputs[path] = recreate_value(rec.value, step)
                elif rec.has_data:
                    inputs[path] = reference.load(rec)
                else:
                    raise NotReplayable(f"input {path or '0'} was stored as statistics only")
            args, kwargs = rebuild_call(inputs)
            device, dtype = _param_placement(module)
            args = move_floating(args, device, dtype)
            kwargs = move_floating(kwargs, device, dtype)
            with torch.inference_mode():
                output = module(*args, **kwargs)
        except NotReplayable as e:
            skipped[label] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - a module that cannot run is reported, not fatal
            skipped[label] = f"replay raised {type(e).__name__}: {str(e)[:200]}"
            continue
        entries = []
        # The inputs as model B received them (cast to its dtype): the diff then knows what
        # each replayed module carried in, so its local error is judged on its own rounding.
        for path, rec in calls[key].items():
            value = inputs.get(path)
            if rec.kind == "value" or not isinstance(value, torch.Tensor):
                continue
            fed = move_floating(value, device, dtype)
            t = fed.detach().to("cpu").contiguous().clone()
            entries.append(({"step": step, "module": name, "call": call, "role": "input", "path": path,
                             "seq": seq, "kind": "tensor", "dtype": str(t.dtype).removeprefix("torch."),
                             "shape": list(t.shape), "device": str(fed.device),
                             "stats": tensor_stats(t).to_json(), "checksum": checksum(t)}, t))
            seq += 1
        for path, value in flatten(output):
            if not isinstance(value, torch.Tensor):
                continue
            t = value.detach().to("cpu").contiguous().clone()
            rec_json = {"step": step, "module": name, "call": call, "role": "output", "path": path,
                        "seq": seq, "kind": "tensor", "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": list(t.shape), "device": str(value.device),
                        "stats": tensor_stats(t).to_json(), "checksum": checksum(t)}
            seq += 1
            entries.append((rec_json, t))
        writer.commit(entries)
    if progress:
        progress(len(order), len(order))
    writer.write_status({"status": "complete", "reason": None, "pid": os.getpid(), "records": seq})
    writer.close()
    atomic_write_json(out / fmt.RUN_JSON, {
        "format_version": fmt.FORMAT_VERSION, "tool": "tensortap",
        "versions": {"tensortap": __version__, "torch": torch.__version__},
        "created": started, "finished": time.time(),
        "model": model_description(model),
        "engine": {**(reference.info.get("engine") or {}), "name": (reference.info.get("engine") or {}).get("name", "torch"),
                   "replay_of": str(reference.path)},
        "parallel": {"rank": 0, "world_size": 1},
        "status": "complete", "reason": None, "warnings": [],
        "replay": {"reference": str(reference.path), "replayed": len(order) - len(skipped),
                   "skipped": skipped},
    }, durable=False)
    return Run(out)
