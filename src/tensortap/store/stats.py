"""Per-tensor float64 statistics and the checksum of a tensor's stored bytes.

The writer thread runs these over every captured byte, so they are built for speed
without giving up float64. With the compiled kernels (``tensortap.kernels``, numba) one
pass computes every sum, the extremes, the zero count and the stats-mode sketch. Without
them, the tensor is converted to float64 one cache-sized piece at a time (into a reused
scratch buffer), and each piece feeds every sum. Tensors holding NaN or Inf, rare and
irregular, take the plain reference path (``_stats_reference``), which defines the
semantics: statistics over the finite elements, NaN/Inf counted and excluded.
"""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from tensortap import kernels
from tensortap.store.record import TensorStats

if TYPE_CHECKING:
    from tensortap.store.sketch import CountSketch

try:  # ISA-L's CRC32 gives the same values as zlib's, about five times faster.
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on the environment
    _crc32 = zlib.crc32

CRC32_IMPL = "isal" if _crc32 is not zlib.crc32 else "zlib"

_EMPTY = TensorStats(None, None, None, None, None, None, 0, 0, 0, 0)

PIECE = 1 << 18
"""Elements converted to float64 at a time: 2 MiB of scratch, about an L2 cache."""

_WELL_CONDITIONED = 1e-3
"""One-pass variance (E[x²] - mean²) is used when var >= this * E[x²]: its relative error
is then below ~1e-12. Otherwise (|mean| >> std) a second, centred pass is made."""

_scratch = threading.local()

_NUMPY_REDUCE = {torch.float32, torch.float64, torch.float16,
                 torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}

KERNEL_NATIVE = {torch.float32, torch.float64}
"""Dtypes the compiled kernels (statistics and diff metrics) read as they are."""
_KERNEL_VIA_FLOAT32 = {torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16}
"""Dtypes converted to float32 (exactly) a piece at a time for the kernels. Wider integers
are not exact in float32 and take the float64 path; so do the float8 types, rare here."""

_KERNEL_DTYPES = KERNEL_NATIVE | _KERNEL_VIA_FLOAT32


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _flat(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().reshape(-1)
    if x.is_complex():
        x = torch.view_as_real(x).reshape(-1)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    return x


def _pieces(x: torch.Tensor, piece: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(offset, source piece, float64 copy of it)`` over a flat tensor."""
    n = x.numel()
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < min(piece, n):
        # Kept per thread and reused: a fresh buffer of a few hundred KiB is a fresh
        # mapping, page-faulted on every call (that alone cost 3x the statistics).
        buf = _scratch.buf = torch.empty(max(piece, PIECE) if n > 1024 else max(n, 1), dtype=torch.float64)
    for off in range(0, n, piece):
        src = x[off:off + piece]
        yield off, src, buf[:src.numel()].copy_(src)


def float64_pieces(t: torch.Tensor, piece: int = PIECE, clean: bool = False
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(offset, float64 copy)`` of consecutive pieces of the flat tensor.

    The copies live in one per-thread scratch buffer: each is overwritten by the next,
    so use a piece before asking for the next one. ``clean`` maps NaN/±Inf to 0.
    """
    for off, _, out in _pieces(_flat(t), piece):
        if clean:
            torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0, out=out)
        yield off, out


def _np_scratch(dtype: type, n: int) -> np.ndarray:
    """A per-thread numpy buffer of at least ``n`` elements of ``dtype`` (reused)."""
    bufs = getattr(_scratch, "np", None)
    if bufs is None:
        bufs = _scratch.np = {}
    buf = bufs.get(dtype)
    if buf is None or buf.size < n:
        buf = bufs[dtype] = np.empty(max(n, PIECE if n > 1024 else n), dtype=dtype)
    return buf[:n]


def numpy_view(x: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU piece, or None for what numpy cannot view (bfloat16, float8,
    a tensor with its negative/conjugate bit set)."""
    try:
        return x.numpy()
    except (RuntimeError, TypeError):
        return None


def _count_zero(a: np.ndarray) -> int:
    """Elements equal to zero (±0.0 both): a compare into a reused mask, then a count of
    the mask; 3x faster than counting the non-zero values themselves."""
    mask = _np_scratch(np.bool_, a.size)
    return int(np.count_nonzero(np.equal(a, 0, out=mask)))


@dataclass
class StatSums:
    """The running sums of one pass over (part of) a flat tensor; parts combine with ``+``."""

    total: float = 0.0
    sumsq: float = 0.0
    mn: float = math.inf
    mx: float = -math.inf
    zeros: int = 0
    single: torch.Tensor | None = None
    """The float64 copy of the whole tensor when it was one piece (saves the second pass)."""

    def __add__(self, o: "StatSums") -> "StatSums":
        return StatSums(self.total + o.total, self.sumsq + o.sumsq, min(self.mn, o.mn),
                        max(self.mx, o.mx), self.zeros + o.zeros, None)


def kernel_reads(dtype: torch.dtype) -> bool:
    """Whether the compiled kernels are loaded and compute the statistics of ``dtype``."""
    return kernels.loaded() is not None and dtype in _KERNEL_DTYPES


def stat_sums(t: torch.Tensor, start: int = 0, stop: int | None = None,
              sketch: CountSketch | None = None) -> StatSums:
    """One pass over elements ``[start, stop)`` of the flat tensor (its real view if complex).

    ``sketch`` (stats mode) is fed the same elements, at their offsets in the whole flat
    tensor. Two threads may each take a part of one tensor: ``stat_sums(t, 0, m) +
    stat_sums(t, m)`` equals ``stat_sums(t)`` up to float64 rounding.
    """
    x = _flat(t)
    x = x[start:stop] if (start or stop is not None) else x
    k = kernels.get()
    if k is not None and x.dtype in _KERNEL_DTYPES:
        arrays = sketch.kernel_arrays(start + x.numel(), k.WIDTH) if sketch is not None else None
        if sketch is None or arrays is not None:
            return _kernel_sums(k, x, start, arrays)
    return _numpy_sums(x, start, sketch)


def _kernel_sums(k, x: torch.Tensor, start: int,
                 sketch: tuple[np.ndarray, np.ndarray] | None) -> StatSums:
    """``stat_sums`` through the compiled one-pass kernel (``kernels.compiled.fused_stats``)."""
    if x.dtype in KERNEL_NATIVE and (a := numpy_view(x)) is not None:
        return StatSums(*_kernel_call(k, a, start, sketch))  # one part: nothing to add up
    acc_sums = StatSums()
    for off, a in _float32_pieces(x):
        acc_sums = acc_sums + StatSums(*_kernel_call(k, a, start + off, sketch))
    return acc_sums


def _kernel_call(k, a: np.ndarray, base: int, sketch: tuple[np.ndarray, np.ndarray] | None
                 ) -> tuple[float, float, float, float, int]:
    if sketch is None:
        return k.plain_stats(a, base)
    return k.fused_stats(a, base, *sketch, True)


def _float32_pieces(x: torch.Tensor) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, float32 copy)`` of consecutive pieces, in a reused per-thread buffer."""
    n = x.numel()
    buf = _np_scratch(np.float32, min(PIECE, n))
    out = torch.from_numpy(buf)
    for off in range(0, n, PIECE):
        src = x[off:off + PIECE]
        yield off, out[:src.numel()].copy_(src).numpy()


def _numpy_sums(x: torch.Tensor, start: int, sketch: CountSketch | None) -> StatSums:
    """``stat_sums`` without the kernels: float64 pieces through torch and numpy."""
    acc = StatSums()
    # min/max/zeros read the source piece where numpy can view it (half the bytes of the
    # float64 copy); other dtypes (bfloat16, float8, uint16/32/64) read the float64 copy.
    numpy_src = x.dtype in _NUMPY_REDUCE
    total = sumsq = 0.0
    # NaN/Inf poison the sums (detected later): numpy's warnings about them are noise.
    with np.errstate(invalid="ignore", over="ignore"):
        for off, src, p in _pieces(x, PIECE):
            # torch, not numpy, for the sums: numpy's BLAS would start threads of its own
            # that spin on the model's core.
            total += float(p.sum())
            sumsq += float(torch.dot(p, p))
            a = numpy_view(src) if numpy_src else None
            a = p.numpy() if a is None else a
            acc.mn = min(acc.mn, float(a.min()))  # numpy's min/max: ~1.6x faster than torch's
            acc.mx = max(acc.mx, float(a.max()))
            acc.zeros += _count_zero(a)
            if sketch is not None:
                sketch.update(start + off, p)
            acc.single = p if off == 0 and not start else None
    acc.total, acc.sumsq = total, sumsq
    return acc


def stats_from_sums(t: torch.Tensor, sums: StatSums) -> TensorStats:
    """The statistics of ``t`` from the sums of every part of it (see ``stat_sums``)."""
    numel = t.numel()
    if numel == 0:
        return _EMPTY
    count = numel * 2 if t.is_complex() else numel  # real and imaginary parts both count
    if not (math.isfinite(sums.total) and math.isfinite(sums.sumsq)):
        # NaN or Inf present (they poison the sums), or float64 data overflowing them.
        return _stats_reference(t)
    mean = sums.total / count
    mean_sq = sums.sumsq / count
    var = mean_sq - mean * mean
    if var < _WELL_CONDITIONED * mean_sq:
        var = _centred_sum_sq(t, mean, sums.single) / count
    mn, mx = sums.mn, sums.mx
    return TensorStats(
        min=mn, max=mx, mean=mean, std=math.sqrt(max(var, 0.0)) if count > 1 else 0.0,
        absmax=max(abs(mn), abs(mx)), l2=_finite_or_none(math.sqrt(sums.sumsq)),
        nan=0, inf=0, zero=sums.zeros, numel=numel,
    )


def tensor_stats(t: torch.Tensor, sketch: CountSketch | None = None) -> TensorStats:
    """Statistics over every element, in float64; NaN/Inf are counted and excluded.

    ``sketch`` (stats mode) is fed every element in the same pass.
    """
    if t.numel() == 0:
        return _EMPTY
    return stats_from_sums(t, stat_sums(t, sketch=sketch))


def _centred_sum_sq(t: torch.Tensor, mean: float, single: torch.Tensor | None) -> float:
    """sum((x - mean)^2) in float64, re-using the scratch piece when there was only one."""
    k = kernels.get()
    if k is not None and t.dtype in KERNEL_NATIVE and (a := numpy_view(_flat(t))) is not None:
        return float(k.centred_sum_sq(a, mean))
    pieces = [(0, single)] if single is not None else float64_pieces(t)
    m2 = 0.0
    for _, p in pieces:
        d = p.sub_(mean)
        m2 += float(torch.dot(d, d))
    return m2


def _stats_reference(t: torch.Tensor) -> TensorStats:
    """The plain definition (whole-tensor float64 copy, masks): for tensors with NaN/Inf."""
    numel = t.numel()
    x = _flat(t).to(torch.float64)
    nan_mask = torch.isnan(x)
    inf_mask = torch.isinf(x)
    nan = int(nan_mask.sum())
    inf = int(inf_mask.sum())
    finite = x[~(nan_mask | inf_mask)] if (nan or inf) else x
    zero = int((x == 0).sum())
    if finite.numel() == 0:
        return TensorStats(None, None, None, None, None, None, nan, inf, zero, numel)
    mn = float(finite.min())
    mx = float(finite.max())
    mean = float(finite.mean())
    std = float(finite.std(unbiased=False)) if finite.numel() > 1 else 0.0
    l2 = float(torch.linalg.vector_norm(finite))
    # float64 sums overflow for float64 data near its limit (mean of [1e308, 1e308] is
    # inf); the manifest is strict JSON, so a non-finite statistic is stored as None.
    return TensorStats(
        min=mn, max=mx, mean=_finite_or_none(mean), std=_finite_or_none(std),
        absmax=max(abs(mn), abs(mx)), l2=_finite_or_none(l2), nan=nan, inf=inf, zero=zero, numel=numel,
    )


def tensor_bytes_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, exactly as safetensors stores them."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def crc32(data: memoryview | bytes, value: int = 0) -> int:
    """zlib-compatible CRC32 (ISA-L's when installed)."""
    return _crc32(data, value) & 0xFFFFFFFF


def checksum(t: torch.Tensor) -> str:
    """CRC32 of the tensor's stored bytes, as ``crc32:xxxxxxxx``."""
    return f"crc32:{crc32(tensor_bytes_view(t)):08x}"
