"""Rebuild a module call's ``(args, kwargs)`` from the flat ``path -> value`` records of a run."""

from __future__ import annotations

from typing import Any

import torch


class NotReplayable(Exception):
    """The recorded inputs cannot be turned back into a call (the message says why)."""


def _is_index(part: str) -> bool:
    return part.isdigit()


def _assemble(items: dict[tuple[str, ...], Any]) -> Any:
    """Nested structure from ``{path_parts: leaf}``; numeric parts become tuples."""
    if () in items:
        return items[()]
    groups: dict[str, dict[tuple[str, ...], Any]] = {}
    for parts, leaf in items.items():
        groups.setdefault(parts[0], {})[parts[1:]] = leaf
    if all(_is_index(k) for k in groups):
        n = max(int(k) for k in groups) + 1
        return tuple(_assemble(groups[str(i)]) if str(i) in groups else None for i in range(n))
    return {k: _assemble(v) for k, v in groups.items()}


def rebuild_call(inputs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """``{"0": t, "1.0": a, "1.1": b, "mask": m}`` -> ``((t, (a, b)), {"mask": m})``."""
    positional: dict[tuple[str, ...], Any] = {}
    keyword: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in inputs.items():
        parts = tuple(path.split(".")) if path else ("0",)
        if _is_index(parts[0]):
            positional[parts] = value
        else:
            keyword.setdefault(parts[0], {})[parts[1:]] = value
    args: tuple = ()
    if positional:
        assembled = _assemble(positional)
        args = assembled if isinstance(assembled, tuple) else (assembled,)
    kwargs = {k: _assemble(v) for k, v in keyword.items()}
    return args, kwargs


def recreate_value(value: Any, step: int) -> Any:
    """A recorded non-tensor value as a Python object, or NotReplayable.

    Plain JSON values are themselves. Objects were recorded as ``{"type": name}``; a
    KV cache can be replaced by None only in the first step (prefill), where nothing
    has been cached yet, so attention over the current tokens is the whole computation.
    """
    if not isinstance(value, dict) or "type" not in value:
        return value
    name = str(value.get("type"))
    if name.endswith("Cache") and step == 0:
        return None
    raise NotReplayable(f"needs a {name} object that cannot be re-created from the run"
                        + (" (KV-cache state after step 0)" if name.endswith("Cache") else ""))


def move_floating(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """Put tensors on the module's device, floating tensors in its parameter dtype."""
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(move_floating(o, device, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: move_floating(v, device, dtype) for k, v in obj.items()}
    return obj
