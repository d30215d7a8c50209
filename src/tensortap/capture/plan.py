"""Deciding, once and before the model runs, which modules get hooks."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from tensortap.capture.config import CaptureConfig
from tensortap.errors import ConfigError
from tensortap.store.format import MAX_NAME_CHARS

_LAYER_RE = re.compile(r"(?:^|\.)layers?\.(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a qualified name (``model.layers.3.mlp`` -> 3)."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


@dataclass
class PlannedModule:
    name: str
    module: nn.Module
    calls: frozenset[int] | None
    """Only these call indices within a step are recorded; None: every call."""


def is_callable_module(module: nn.Module) -> bool:
    """False for containers such as ModuleList/ModuleDict, whose forward is never called."""
    return type(module).forward is not nn.Module.forward


def plan_modules(model: nn.Module, config: CaptureConfig) -> list[PlannedModule]:
    """Modules to hook, in ``named_modules()`` order, with their call filters."""
    filters = config.module_filters()
    layers = set(config.layers) if config.layers is not None else None
    planned = []
    for name, module in model.named_modules():
        if not is_callable_module(module) or len(name) > MAX_NAME_CHARS:
            continue
        if layers is not None:
            idx = layer_index(name)
            if idx is not None and idx not in layers:
                continue
        if not filters:
            planned.append(PlannedModule(name, module, None))
            continue
        hits = [f for f in filters if f.matches(name)]
        if not hits:
            continue
        calls = None if any(f.call is None for f in hits) else frozenset(f.call for f in hits)
        planned.append(PlannedModule(name, module, calls))
    return planned


def check_plan(model: nn.Module, config: CaptureConfig, planned: list[PlannedModule]) -> list[str]:
    """Filters that select nothing are a mistake, not an empty run.

    Raises ConfigError when ``modules``/``layers`` select no module at all, or when none of
    the requested layers exists (naming what does); returns warnings for the filters
    that matched nothing while others did (an error with ``strict``).
    """
    names = [n for n, m in model.named_modules() if is_callable_module(m)]
    long_names = [n for n in names if len(n) > MAX_NAME_CHARS]
    found_layers = sorted({i for i in map(layer_index, names) if i is not None})
    problems: list[str] = []
    if config.layers is not None:
        missing = sorted(set(config.layers) - set(found_layers))
        if missing and len(missing) == len(set(config.layers)):
            have = f"layers {found_layers[0]}-{found_layers[-1]}" if found_layers else "no numbered layers"
            raise ConfigError(f"layers {missing} do not exist: the model has {have}")
        if missing:
            problems.append(f"layers {missing} do not exist (the model has {len(found_layers)} layers)")
    filters = config.module_filters()
    if filters:
        unmatched = [f for f in filters if not any(f.matches(n) for n in names)]
        if len(unmatched) == len(filters) or not planned:
            shown = ", ".join(repr(f.pattern) for f in unmatched or filters)
            raise ConfigError(f"modules {shown} match no module of the model; its modules are named like "
                              f"{_examples(names, [f.pattern for f in filters])}")
        for f in unmatched:
            problems.append(f"module filter {f.pattern!r} matches no module of the model")
    if not planned:
        raise ConfigError("the filters (modules, layers) leave no module to capture")
    if long_names:
        problems.append(f"{len(long_names)} module(s) not captured: their names are longer than the "
                        f"{MAX_NAME_CHARS} characters a run allows ({long_names[0][:60]!r}…)")
    if problems and config.strict:
        raise ConfigError("strict capture: " + "; ".join(problems))
    return problems


def _examples(names: list[str], patterns: list[str], n: int = 6) -> str:
    """A few module names, the ones closest to what was asked first."""
    import difflib

    close: list[str] = []
    for p in patterns:
        close += difflib.get_close_matches(p, names, n=3, cutoff=0.3)
    picked = list(dict.fromkeys(close + [x for x in names if x][:n]))[:n]
    return ", ".join(repr(x) for x in picked) + (" …" if len(names) > n else "")
