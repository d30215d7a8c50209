"""A fixed-seed linear sketch of a tensor (count sketch), so stats-only runs can be compared.

``S`` is linear, so ``S(a) - S(b) = S(a - b)`` and ``||S(a - b)||`` estimates ``||a - b||``
(relative error about ``sqrt(2 / SKETCH_DIM)``). Two runs sketched with the same
``SKETCH_DIM`` of tensors with equal numel can therefore estimate rel_l2, cosine and SQNR
without storing data. Element ``i`` goes to a bucket and gets a sign from a hash of ``i``.
"""

from __future__ import annotations

import torch

SKETCH_DIM = 128
_MUL = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64 (Fibonacci hashing)


def sketch(t: torch.Tensor, dim: int = SKETCH_DIM) -> tuple[float, ...]:
    x = t.detach().reshape(-1)
    if x.is_complex():
        x = torch.view_as_real(x).reshape(-1)
    x = x.to(torch.float64)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    n = x.numel()
    h = torch.arange(n, dtype=torch.int64, device=x.device) * _MUL
    h = h ^ (h >> 29)
    bucket = (h >> 7) % dim
    sign = ((h >> 43) & 1).to(torch.float64) * 2 - 1
    out = torch.zeros(dim, dtype=torch.float64, device=x.device)
    out.index_add_(0, bucket, x * sign)
    return tuple(out.tolist())
