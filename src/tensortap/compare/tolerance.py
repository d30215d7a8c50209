"""Tolerances: dtype-aware defaults, user overrides, and the rule that decides a pair's status.

The rule is norm-wise (see docs/diff.md). A floating pair agrees when::

    ||a - b||_2  <=  atol * sqrt(n)  +  rtol * ||a||_2

i.e. ``rel_l2 <= rtol`` for tensors of ordinary size, with ``atol`` (an RMS error) as the
guard for tensors that are (nearly) zero. It is the L2 form of ``allclose``'s
``|a - b| <= atol + rtol * |a|``: a deep network in bf16 always has *some* element beyond
any elementwise tolerance, while a real bug moves the tensor as a whole. The worst
element and the fraction failing elementwise are still reported for every pair.

With a noise floor (a third run C, e.g. the reference rerun in another dtype), the bound
becomes dynamo's ``same()`` rule (torch/_dynamo/utils.py)::

    ||a - b||  <=  k * ||a - c||  +  (atol * sqrt(n) + rtol * ||a||) / 10

with ``k = 2``, or 3 for 16-bit/8-bit dtypes and tensors under 1000 elements.
Integer and bool tensors must match exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from tensortap.errors import ConfigError

# (atol as an RMS error, rtol on ||a-b||/||a||), per dtype. Why these numbers:
# - float32: reduction-order noise between kernels is ~1e-7..1e-6 relative (HF vs vLLM
#   measured 5e-7 on the tiny Llama); 1e-5 separates it from bugs with a wide margin.
# - bfloat16 (eps 2**-7): one rounding is ~2e-3 relative and it accumulates through
#   layers (~1e-2 after two decoder layers of the tiny Llama against fp32); 4e-2 matches
#   SGLang's default rel_diff <= 1e-3 (rel_diff ~ rel_l2**2 / 2).
# - float16 has 8x finer eps than bfloat16; float8 formats are coarser still.
DTYPE_DEFAULTS: dict[str, tuple[float, float]] = {
    "float64": (1e-12, 1e-9),
    "float32": (1e-6, 1e-5),
    "float16": (1e-4, 5e-3),
    "bfloat16": (1e-3, 4e-2),
    "float8_e4m3fn": (1e-2, 0.25),
    "float8_e4m3fnuz": (1e-2, 0.25),
    "float8_e5m2": (1e-2, 0.5),
    "float8_e5m2fnuz": (1e-2, 0.5),
}
_COMPLEX = {"complex128": "float64", "complex64": "float32", "complex32": "float16"}

FLOOR_K = 2.0
FLOOR_K_LOOSE = 3.0
SMALL_NUMEL = 1000


def dtype_category(dtype: str | None) -> str:
    """``float``, ``int``, ``bool`` or ``other``: pairs of different categories are a mismatch."""
    if dtype is None:
        return "other"
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("float", "bfloat", "complex")):
        return "float"
    if dtype.startswith(("int", "uint")):
        return "int"
    return "other"


def dtype_eps(dtype: str) -> float:
    """Machine epsilon of a floating dtype name (complex: of its parts)."""
    name = _COMPLEX.get(dtype, dtype)
    try:
        return float(torch.finfo(getattr(torch, name)).eps)
    except (AttributeError, TypeError):
        return float(torch.finfo(torch.float32).eps)


def coarser_dtype(a: str, b: str) -> str:
    """The less precise of two floating dtypes: its rounding noise bounds what can agree."""
    return a if dtype_eps(a) >= dtype_eps(b) else b


def default_tolerance(dtype: str) -> tuple[float, float]:
    """``(atol, rtol)`` for a floating dtype; unknown ones scale with their epsilon."""
    name = _COMPLEX.get(dtype, dtype)
    if name in DTYPE_DEFAULTS:
        return DTYPE_DEFAULTS[name]
    eps = dtype_eps(name)
    return (max(1e-6, eps), max(1e-5, 5 * eps))


@dataclass(frozen=True)
class Tolerance:
    """The tolerance of one pair. ``exact``: integer/bool data must be equal."""

    atol: float
    rtol: float
    source: str
    """Where it came from: ``bfloat16 default``, ``--rtol``, ``override 'lm_head'``, ``exact``."""
    exact: bool = False

    def bound(self, numel: int, norm_a: float) -> float:
        """The largest allowed ``||a - b||_2``."""
        if self.exact:
            return 0.0
        return self.atol * math.sqrt(max(numel, 0)) + self.rtol * norm_a

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "source": self.source, "exact": self.exact}


EXACT = Tolerance(0.0, 0.0, "exact (integer/bool data)", exact=True)


def floor_multiplier(dtype: str, numel: int) -> float:
    """dynamo's ``same()`` multiplier: looser for low-precision dtypes and small tensors."""
    if dtype_eps(dtype) > 1e-4 or numel < SMALL_NUMEL:
        return FLOOR_K_LOOSE
    return FLOOR_K


def floor_bound(err_floor: float, tol: Tolerance, dtype: str, numel: int, norm_a: float) -> tuple[float, float]:
    """``(bound, k)`` with a noise floor: ``k * ||a - c|| + tolerance bound / 10``."""
    k = floor_multiplier(dtype, numel)
    return k * err_floor + tol.bound(numel, norm_a) / 10.0, k


@dataclass(frozen=True)
class Override:
    """A per-module tolerance: the first override whose regex matches (``re.search``) wins."""

    pattern: str
    atol: float | None = None
    rtol: float | None = None

    def matches(self, module: str) -> bool:
        return re.search(self.pattern, module) is not None


def _positive(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {what} {value!r}: expected a number") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"invalid {what} {value!r}: expected a finite number >= 0")
    return v


def parse_override(spec: str) -> Override:
    """``'REGEX:rtol=1e-3,atol=1e-6'`` (CLI ``--tol``) -> Override. The last ``:`` splits."""
    if ":" not in spec:
        raise ConfigError(f"invalid --tol {spec!r}: use REGEX:rtol=X[,atol=Y], e.g. 'lm_head:rtol=1e-3'")
    pattern, _, opts = spec.rpartition(":")
    values: dict[str, float | None] = {}
    for part in opts.split(","):
        key, eq, val = part.strip().partition("=")
        if not eq or key not in ("rtol", "atol"):
            raise ConfigError(f"invalid --tol {spec!r}: expected rtol=X and/or atol=Y after the last ':'")
        values[key] = _positive(val, f"{key} in --tol {spec!r}")
    return make_override(pattern, **values)


def make_override(pattern: str, atol: Any = None, rtol: Any = None) -> Override:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        raise ConfigError(f"invalid tolerance regex {pattern!r}: {e}") from None
    if atol is None and rtol is None:
        raise ConfigError(f"tolerance override {pattern!r} sets neither atol nor rtol")
    return Override(pattern, _positive(atol, "atol"), _positive(rtol, "rtol"))


def _overrides_from(value: Any) -> list[Override]:
    """Accepts Override objects, ``{regex: {"rtol":…, "atol":…}}``, ``{regex: rtol}`` or CLI specs."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        out = []
        for pattern, v in value.items():
            if isinstance(v, Mapping):
                unknown = set(v) - {"atol", "rtol"}
                if unknown:
                    raise ConfigError(f"tolerance override {pattern!r}: unknown keys {sorted(unknown)} (use atol, rtol)")
                out.append(make_override(str(pattern), v.get("atol"), v.get("rtol")))
            elif isinstance(v, (tuple, list)) and len(v) == 2:
                out.append(make_override(str(pattern), rtol=v[0], atol=v[1]))
            else:
                out.append(make_override(str(pattern), rtol=v))
        return out
    if isinstance(value, (str, Override)):
        value = [value]
    out = []
    for item in value:
        out.append(item if isinstance(item, Override) else parse_override(str(item)))
    return out


class TolerancePolicy:
    """Chooses each pair's tolerance: per-module override > global atol/rtol > dtype default."""

    def __init__(self, atol: float | None = None, rtol: float | None = None,
                 overrides: Iterable[Override] | Mapping[str, Any] | None = None) -> None:
        self.atol = _positive(atol, "atol")
        self.rtol = _positive(rtol, "rtol")
        self.overrides = _overrides_from(overrides)

    def for_pair(self, module: str, dtype_a: str | None, dtype_b: str | None) -> Tolerance:
        cat = dtype_category(dtype_a)
        if cat in ("int", "bool"):
            return EXACT
        dtype = coarser_dtype(dtype_a or "float32", dtype_b or dtype_a or "float32")
        atol, rtol = default_tolerance(dtype)
        parts = [f"{dtype} default"]
        if self.atol is not None or self.rtol is not None:
            atol = self.atol if self.atol is not None else atol
            rtol = self.rtol if self.rtol is not None else rtol
            parts = ["--atol/--rtol"]
        for ov in self.overrides:
            if ov.matches(module):
                atol = ov.atol if ov.atol is not None else atol
                rtol = ov.rtol if ov.rtol is not None else rtol
                parts = [f"override {ov.pattern!r}"]
                break
        return Tolerance(atol, rtol, parts[0])

    def describe(self) -> dict[str, Any]:
        return {
            "atol": self.atol, "rtol": self.rtol,
            "overrides": [{"pattern": o.pattern, "atol": o.atol, "rtol": o.rtol} for o in self.overrides],
            "dtype_defaults": {k: {"atol": a, "rtol": r} for k, (a, r) in DTYPE_DEFAULTS.items()},
        }
