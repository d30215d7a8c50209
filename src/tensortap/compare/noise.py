"""The noise model: how much error a pair may show without anything being wrong.

A tensor's error has two sources (docs/diff.md, "Noise model", derives each term):

- **carried**: error its inputs already had, which the module passes on. A module can
  re-scale a relative error but not invent one; we allow it to grow by up to
  ``GAIN`` (the line msProbe's ``compare -da`` also draws between a module that passes
  error on and one that adds its own);
- **own**: rounding of this module's own arithmetic, which follows from the dtypes and
  the length of the reduction that produced each element.

So a token row ``t`` of an output agrees when::

    ||a_t - b_t||  <=  (GAIN * carried + own) * ||a_t||  +  atol * sqrt(width)

``carried`` is the worst token's relative error among the tensors this one is computed
from (the module call's inputs, an anchor's feeds, or else everything before it in the
step), and, from the second step on, the same tensor's error at earlier steps (state
such as a KV cache is not a captured input). ``atol`` guards rows that are (nearly)
zero. A row beyond this bound has error that neither its inputs nor its dtype explain:
it is where a divergence is **introduced**.
"""

from __future__ import annotations

import math

from tensortap.compare.tolerance import coarser_dtype as coarser, dtype_eps

GAIN = 10.0
"""Largest factor by which a module may grow its inputs' relative error."""

ROUNDING_RMS = 1.0 / math.sqrt(3.0)
"""RMS of a rounding error spread uniformly over [-u, u], in units of u."""

ACCUMULATE = "float32"
"""Precision that 16-bit and 8-bit kernels accumulate their reductions in (CPU and GPU
matmul kernels alike); float32 and float64 kernels accumulate in their own dtype."""


def unit_roundoff(dtype: str) -> float:
    """``u = eps / 2``: the largest relative error of one rounding to ``dtype``."""
    return dtype_eps(dtype) / 2.0


def accumulate_dtype(dtype: str) -> str:
    """The dtype a kernel working in ``dtype`` sums its products in."""
    return dtype if dtype_eps(dtype) <= dtype_eps(ACCUMULATE) else ACCUMULATE


def own_noise(dtype_a: str, dtype_b: str, reduction: int) -> float:
    """Largest RMS relative error one module's own arithmetic adds to a row.

    ``dtype_a``/``dtype_b`` are the pair's dtypes, ``reduction`` the length of the sums
    that produce each element (a Linear's in_features; 1 for elementwise work). With
    ``u_s`` the unit roundoff of the coarser dtype and ``u_acc`` that of the dtype its
    kernels accumulate in:

    - each side rounds its result to its dtype: two independent roundings differ by
      ``sqrt(2) u_s / sqrt(3)`` RMS;
    - the two kernels sum ``K`` products in different orders: the sums differ by a
      random walk of ``K`` roundings, ``sqrt(K) u_acc / sqrt(3)``, which the rest of
      the module may grow like any carried error (``GAIN``);
    - when the dtypes differ, the coarser side also holds its inputs and weights rounded
      to ``u_s``: ``u_s / sqrt(3)`` more, carried like an input error (``GAIN``).
    """
    dtype = coarser(dtype_a, dtype_b)
    u_s = unit_roundoff(dtype)
    u_acc = unit_roundoff(accumulate_dtype(dtype))
    k = max(1, int(reduction))
    terms = math.sqrt(2.0) * u_s + GAIN * u_acc * math.sqrt(k)
    if dtype_eps(dtype_a) != dtype_eps(dtype_b):
        terms += GAIN * u_s
    return ROUNDING_RMS * terms


def allowed(carried: float, own: float) -> float:
    """The largest relative error (per token row) a tensor may have."""
    return GAIN * max(0.0, carried) + own
