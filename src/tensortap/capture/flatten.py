r"""Flatten nested arguments and outputs into ``(path, leaf)`` pairs.

Paths: a lone tensor is ``""``; positional items ``"0"``, ``"1"``; dict keys and
dataclass fields by name; nesting joined with ``.``. Leaves are tensors or
JSON-safe values (non-tensor arguments go into the manifest as JSON).

Dict keys are text from the model, so they are encoded to keep paths unambiguous and
storable: ``\`` and ``.`` inside a key are escaped (``\\``, ``\.``), so ``{"a.b": x}``
and ``{"a": {"b": y}}`` get different paths; control characters become ``\xNN``
(a manifest string may not hold NUL); a key longer than 200 characters is cut and
suffixed with a CRC32 of the whole key. Ordinary identifiers are unchanged. More than
4096 items in one container add a ``…`` value leaf saying how many were left out.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Iterator

import torch

_MAX_DEPTH = 8
_MAX_ITEMS = 4096


_MAX_KEY = 200
TRUNCATED = "…"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def encode_key(key: Any) -> str:
    """One dict key as a path component (see the module docstring for the rules)."""
    try:
        text = key if isinstance(key, str) else str(key)
    except Exception:  # noqa: BLE001 - a key whose __str__ fails still needs a name
        text = f"<{type(key).__qualname__}>"
    out = []
    for ch in text:
        if ch in "\\.":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            # Lone surrogates cannot be encoded as UTF-8 in the manifest either.
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    enc = "".join(out)
    if len(enc) > _MAX_KEY:
        crc = zlib.crc32(text.encode("utf-8", "surrogatepass")) & 0xFFFFFFFF
        enc = f"{enc[:_MAX_KEY - 10]}~{crc:08x}"
    return enc


def _truncated(prefix: str, obj: Any, n: int) -> tuple[str, dict]:
    # Never silently miss: say that items were left out, and how many.
    return _join(prefix, TRUNCATED), {"type": type(obj).__qualname__,
                                      "truncated": f"{n} items, only the first {_MAX_ITEMS} recorded"}


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
                yield _truncated(prefix, obj, len(obj))
                break
            yield from flatten(v, _join(prefix, encode_key(k)), depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        if hasattr(obj, "_fields"):  # namedtuple: use field names
            for k, v in zip(obj._fields, obj):
                yield from flatten(v, _join(prefix, k), depth + 1)
            return
        for i, v in enumerate(obj[:_MAX_ITEMS]):
            yield from flatten(v, _join(prefix, str(i)), depth + 1)
        if len(obj) > _MAX_ITEMS:
            yield _truncated(prefix, obj, len(obj))
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
        yield from flatten(v, encode_key(k), 1)
