"""Flatten nested arguments and outputs into ``(path, leaf)`` pairs.

Paths: a lone tensor is ``""``; positional items ``"0"``, ``"1"``; dict keys and
dataclass fields by name; nesting joined with ``.``. Leaves are tensors or
JSON-safe values (non-tensor arguments go into the manifest as JSON).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import torch

_MAX_DEPTH = 8
_MAX_ITEMS = 4096


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def json_safe(value: Any) -> Any:
    """A JSON-serialisable description of a non-tensor leaf."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**62:
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.Size):
        return list(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return {"type": type(value).__qualname__}


def flatten(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Yield ``(path, leaf)`` for every tensor and scalar inside ``obj``."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
        return
    if depth >= _MAX_DEPTH:
        yield prefix, {"type": type(obj).__qualname__, "truncated": "too deep"}
        return
    if isinstance(obj, dict):
        # transformers' ModelOutput is an OrderedDict holding only the fields that are set.
        for i, (k, v) in enumerate(obj.items()):
            if i >= _MAX_ITEMS:
                break
            yield from flatten(v, _join(prefix, str(k)), depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        if hasattr(obj, "_fields"):  # namedtuple: use field names
            for k, v in zip(obj._fields, obj):
                yield from flatten(v, _join(prefix, k), depth + 1)
            return
        for i, v in enumerate(obj[:_MAX_ITEMS]):
            yield from flatten(v, _join(prefix, str(i)), depth + 1)
        return
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from flatten(getattr(obj, f.name, None), _join(prefix, f.name), depth + 1)
        return
    yield prefix, json_safe(obj)


def flatten_inputs(args: tuple, kwargs: dict | None) -> Iterator[tuple[str, Any]]:
    """Positional arguments as ``"0"``, ``"1"``…, keyword arguments by name."""
    for i, a in enumerate(args):
        yield from flatten(a, str(i), 1)
    for k, v in (kwargs or {}).items():
        yield from flatten(v, str(k), 1)
