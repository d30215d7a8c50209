"""Estimated metrics for pairs without tensor data (stats mode, tensors over ``max_numel``).

With sketches on both sides (``tensortap.store.sketch``: a fixed-seed linear count
sketch, so ``S(a) - S(b) = S(a - b)``), ``||S(a) - S(b)||`` estimates ``||a - b||`` within
about ``sqrt(2 / 128)`` ≈ 12 % relative, and ``rel_l2 ≈ ||S(a) - S(b)|| / ||a||``.

Without sketches only lower bounds exist: ``||a - b|| >= | ||a|| - ||b|| |`` (triangle
inequality) and ``||a - b|| >= sqrt(n) |mean a - mean b|`` (Cauchy-Schwarz). A pair whose
bound already exceeds the tolerance has diverged; one that stays under it is reported as
``ok`` but marked as a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tensortap.compare.metrics import PairMetrics
from tensortap.store.record import TensorStats


@dataclass
class Estimate:
    metrics: PairMetrics
    method: str
    """``sketch`` (an estimate) or ``stats`` (a lower bound)."""


def _dot(x: tuple[float, ...], y: tuple[float, ...]) -> float:
    return math.fsum(p * q for p, q in zip(x, y))


def estimate(sa: TensorStats, sb: TensorStats, sketch_a: tuple[float, ...] | None,
             sketch_b: tuple[float, ...] | None) -> Estimate:
    """Metrics of a pair from its statistics (and sketches when both have one)."""
    m = PairMetrics(numel=sa.numel)
    m.norm_a = sa.l2 or 0.0
    m.norm_b = sb.l2 or 0.0
    # NaN/Inf positions are unknown; differing counts prove at least that many disagree.
    m.nan_mismatch = abs(sa.nan - sb.nan)
    m.inf_mismatch = abs(sa.inf - sb.inf)
    if sa.absmax is not None and sb.absmax is not None:
        m.max_abs = abs(sa.absmax - sb.absmax)  # a lower bound of max|a - b|
    if sketch_a is not None and sketch_b is not None and len(sketch_a) == len(sketch_b):
        diff = [p - q for p, q in zip(sketch_a, sketch_b)]
        m.err = math.sqrt(_dot(diff, diff))
        na, nb = math.sqrt(_dot(sketch_a, sketch_a)), math.sqrt(_dot(sketch_b, sketch_b))
        # <a, b> from the polarisation identity on the true norms and the estimated error.
        m.dot = (m.norm_a ** 2 + m.norm_b ** 2 - m.err ** 2) / 2.0
        if na > 0 and nb > 0:
            m.dot = _dot(sketch_a, sketch_b) / (na * nb) * m.norm_a * m.norm_b
        m.mean_abs = m.err / math.sqrt(sa.numel) if sa.numel else 0.0
        return Estimate(m, "sketch")
    bound = abs(m.norm_a - m.norm_b)
    if sa.mean is not None and sb.mean is not None and sa.numel:
        bound = max(bound, math.sqrt(sa.numel) * abs(sa.mean - sb.mean))
    m.err = bound
    m.dot = (m.norm_a ** 2 + m.norm_b ** 2 - m.err ** 2) / 2.0
    m.mean_abs = abs(sa.mean - sb.mean) if sa.mean is not None and sb.mean is not None else 0.0
    return Estimate(m, "stats")
