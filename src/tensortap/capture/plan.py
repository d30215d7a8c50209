"""Deciding, once and before the model runs, which modules get hooks."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from tensortap.capture.config import CaptureConfig

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
        if not is_callable_module(module):
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
