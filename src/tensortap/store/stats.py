"""Per-tensor float64 statistics and the checksum of a tensor's stored bytes."""

from __future__ import annotations

import math
import zlib

import torch

from tensortap.store.record import TensorStats

_EMPTY = TensorStats(None, None, None, None, None, None, 0, 0, 0, 0)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def tensor_stats(t: torch.Tensor) -> TensorStats:
    """Statistics over every element, in float64; NaN/Inf are counted and excluded."""
    numel = t.numel()
    if numel == 0:
        return _EMPTY
    if t.is_complex():
        t = torch.view_as_real(t)
    x = t.detach().reshape(-1)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if not x.dtype.is_floating_point:
        # Integers cannot hold NaN or Inf; float64 is exact up to 2**53.
        x = x.to(torch.float64)
        nan = inf = 0
        finite = x
    else:
        x = x.to(torch.float64)
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
    return TensorStats(
        min=mn, max=mx, mean=mean, std=std, absmax=max(abs(mn), abs(mx)),
        l2=_finite_or_none(l2), nan=nan, inf=inf, zero=zero, numel=numel,
    )


def tensor_bytes_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, exactly as safetensors stores them."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def checksum(t: torch.Tensor) -> str:
    """CRC32 of the tensor's stored bytes, as ``crc32:xxxxxxxx``."""
    return f"crc32:{zlib.crc32(tensor_bytes_view(t)) & 0xFFFFFFFF:08x}"
