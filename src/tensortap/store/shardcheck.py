"""Structural check of a safetensors shard, without trusting anything its header says.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header + a data
section. The header maps tensor names to ``{"dtype", "shape", "data_offsets": [b, e]}``
(offsets relative to the data section) plus an optional ``__metadata__`` string map.
A file from elsewhere may lie in any of these: this module checks every claim against
the file's real size before a single tensor is read, and reads at most the header.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tensortap.errors import one_line

MAX_HEADER = 100_000_000
"""safetensors' own limit on the header length."""

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
"""Bits per element of every safetensors dtype code."""

TORCH_TO_ST: dict[str, str] = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3", "float8_e8m0fnu": "F8_E8M0", "int16": "I16", "uint16": "U16",
    "float16": "F16", "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32",
    "int64": "I64", "uint64": "U64", "float64": "F64", "complex64": "C64",
}
"""torch dtype names (as the manifest stores them) to safetensors codes."""


@dataclass(frozen=True)
class ShardTensor:
    """One tensor entry of a header, already checked against the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class ShardCheck:
    """The result: the tensors the header describes, and everything wrong with it."""

    tensors: dict[str, ShardTensor] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    data_start: int = 0
    """Where the data section starts in the file (tensor offsets count from here)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of two equal keys silently; a header naming one tensor
    # twice is ambiguous (readers may disagree on which entry wins), so it is an error.
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {one_line(k, 80)!r} appears twice")
        out[k] = v
    return out


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_shard_bytes(head: bytes, file_size: int) -> ShardCheck:
    """Check a shard given its first bytes (at least the 8-byte length and the header,
    or the whole file if shorter) and its total size."""
    res = ShardCheck()
    bad = res.problems.append
    if file_size < 8 or len(head) < 8:
        bad(f"file is {file_size} bytes, too short for a safetensors header")
        return res
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER:
        bad(f"header length {n} exceeds the safetensors limit of {MAX_HEADER} bytes")
        return res
    if 8 + n > file_size:
        bad(f"header length {n} runs past the end of the file ({file_size} bytes)")
        return res
    if len(head) < 8 + n:
        bad(f"only {len(head)} of {8 + n} header bytes could be read")
        return res
    raw = head[8:8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad(f"header is not UTF-8 ({e.reason} at byte {e.start})")
        return res
    if not text.startswith("{"):
        bad("header does not start with '{'")
        return res
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        bad(f"header is not valid JSON ({one_line(str(e) or 'nested too deeply', 200)})")
        return res
    if not isinstance(header, dict):
        bad("header is not a JSON object")
        return res
    data_len = file_size - 8 - n
    res.data_start = 8 + n
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        bad("__metadata__ is not a map of strings")
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        label = one_line(name, 120)
        if not isinstance(entry, dict):
            bad(f"tensor {label!r}: entry is not an object")
            continue
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            bad(f"tensor {label!r}: unknown dtype {one_line(repr(dtype), 40)}")
            continue
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            bad(f"tensor {label!r}: shape is not a list of non-negative integers")
            continue
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_count(o) for o in offsets)):
            bad(f"tensor {label!r}: data_offsets is not a pair of non-negative integers")
            continue
        begin, end = offsets
        if begin > end or end > data_len:
            bad(f"tensor {label!r}: data_offsets [{begin}, {end}] outside the data section "
                f"({data_len} bytes)")
            continue
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            bad(f"tensor {label!r}: shape {shape} of {dtype} needs {bits / 8:g} bytes, "
                f"but its offsets span {end - begin}")
            continue
        res.tensors[name] = ShardTensor(name, dtype, tuple(shape), begin, end)
        spans.append((begin, end, label))
    # safetensors lays tensors out back to back: no overlap, no gap, nothing after.
    pos, prev = 0, None
    for begin, end, label in sorted(spans):
        if begin < pos:
            bad(f"tensor {label!r} overlaps tensor {prev!r} (bytes {begin}..{pos})")
        elif begin > pos:
            bad(f"{begin - pos} unaccounted bytes before tensor {label!r}")
        pos, prev = max(pos, end), label
    if not res.problems and pos != data_len:
        bad(f"{data_len - pos} bytes after the last tensor are not described by the header")
    return res


def check_shard(path: str | Path) -> ShardCheck:
    """Check the shard file at ``path``; reads only its length prefix and header."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER and 8 + n <= size:
                    head += f.read(n)
    except OSError as e:
        res = ShardCheck()
        res.problems.append(f"cannot read the file ({e.strerror or e})")
        return res
    return check_shard_bytes(head, size)
