"""The numba kernels. Imported only by ``tensortap.kernels.load`` (importing numba is slow).

Every loop keeps one accumulator per column of a ``WIDTH``-wide row instead of one scalar:
columns are independent, so the compiler vectorises the loop without reordering any
single sum (no fast-math), and each of the ``WIDTH`` float64 sums covers ``1/WIDTH`` of
the elements, which only helps accuracy (the logits' row sums use ``LANES`` compensated
lanes instead). NaN and Inf are not special-cased here (but for a logit of -inf, which
has probability 0): they make the sums non-finite, and callers then take their exact
(masked) reference path or report the value as not finite.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

WIDTH = 127
"""Columns per row: the count sketch's dimension (``store.sketch.SKETCH_DIM``), so the
sketch, whose bucket of element ``i`` is ``i mod 127``, rides along in the same loop."""

_JIT = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)
"""No bounds checks (they stop vectorisation): every index below is derived from the
arrays' own sizes, except ``signs``, which callers size to cover every row."""


def numba_version() -> str:
    return numba.__version__


@njit(**_JIT)
def _stats_edge(x, start, stop, col, g, sketch, sketching):  # pragma: no cover - compiled
    """``fused_stats`` of a partial row (``x[start:stop]``, from column ``col``), scalar.

    Kept apart: a loop whose trip count is not the constant WIDTH is not vectorised (5x
    slower), and the main loop's accumulators must not be passed anywhere, or the
    compiler can no longer prove they do not overlap and stops vectorising too.
    """
    s = q = zeros = 0.0
    lo, hi = np.inf, -np.inf
    for k in range(stop - start):
        v = np.float64(x[start + k])
        s += v
        q += v * v
        lo = min(lo, v)
        hi = max(hi, v)
        zeros += v == 0.0
        if sketching:  # else ``sketch`` may be a 1-element placeholder
            sketch[col + k] += g * v
    return s, q, lo, hi, zeros


@njit(**_JIT)
def fused_stats(x, base, signs, sketch, sketching):  # pragma: no cover - compiled
    """Sum, sum of squares, min, max and zero count of the 1-D array ``x`` in float64.

    ``x[0]`` is element ``base`` of the whole flat tensor. When ``sketching``, also adds
    ``signs[row] * x`` to ``sketch[col]`` for each element (``row, col = divmod(base + i,
    WIDTH)``): the count sketch, in the same pass. ``signs`` must cover every row.
    """
    n = x.size
    row, col = base // WIDTH, base % WIDTH
    head = min((WIDTH - col) % WIDTH, n)  # up to the first row boundary
    full = (n - head) // WIDTH
    b = head + full * WIDTH
    g_head = signs[row] if sketching and head else 0.0
    g_tail = signs[row + (1 if head else 0) + full] if sketching and b < n else 0.0
    s0, q0, lo0, hi0, z0 = _stats_edge(x, 0, head, col, g_head, sketch, sketching)
    s1, q1, lo1, hi1, z1 = _stats_edge(x, b, n, 0, g_tail, sketch, sketching)
    if head:
        row += 1
    s = np.zeros(WIDTH)
    q = np.zeros(WIDTH)
    lo = np.full(WIDTH, np.inf)
    hi = np.full(WIDTH, -np.inf)
    zeros = np.zeros(WIDTH)
    sk = np.zeros(WIDTH)
    body = x[head:]  # indexed from 0: an offset index into x measured 1.7x slower
    # Four rows per iteration: the loop is bound by loading and storing the six column
    # accumulators, so combining four elements before touching them measured 13-23 %
    # faster than one row at a time (the order of additions changes, not their precision).
    quads = full // 4
    for r in range(quads):
        o = 4 * r * WIDTH
        g1 = signs[row + 4 * r] if sketching else 0.0
        g2 = signs[row + 4 * r + 1] if sketching else 0.0
        g3 = signs[row + 4 * r + 2] if sketching else 0.0
        g4 = signs[row + 4 * r + 3] if sketching else 0.0
        for j in range(WIDTH):
            v1 = np.float64(body[o + j])
            v2 = np.float64(body[o + WIDTH + j])
            v3 = np.float64(body[o + 2 * WIDTH + j])
            v4 = np.float64(body[o + 3 * WIDTH + j])
            s[j] += (v1 + v2) + (v3 + v4)
            q[j] += (v1 * v1 + v2 * v2) + (v3 * v3 + v4 * v4)
            # Branches, not min()/max(): they compile to masked vector stores, measured fastest.
            m1 = v1 if v1 < v2 else v2
            m2 = v3 if v3 < v4 else v4
            m = m1 if m1 < m2 else m2
            if m < lo[j]:
                lo[j] = m
            m1 = v1 if v1 > v2 else v2
            m2 = v3 if v3 > v4 else v4
            m = m1 if m1 > m2 else m2
            if m > hi[j]:
                hi[j] = m
            zeros[j] += ((v1 == 0.0) + (v2 == 0.0)) + ((v3 == 0.0) + (v4 == 0.0))
            sk[j] += (g1 * v1 + g2 * v2) + (g3 * v3 + g4 * v4)
    for r in range(4 * quads, full):  # the last full rows, one at a time
        o = r * WIDTH
        g = signs[row + r] if sketching else 0.0
        for j in range(WIDTH):
            v = np.float64(body[o + j])
            s[j] += v
            q[j] += v * v
            if v < lo[j]:
                lo[j] = v
            if v > hi[j]:
                hi[j] = v
            if v == 0.0:
                zeros[j] += 1.0
            sk[j] += g * v
    if sketching:
        sketch += sk
    return (s.sum() + s0 + s1, q.sum() + q0 + q1, min(lo.min(), lo0, lo1),
            max(hi.max(), hi0, hi1), int(zeros.sum() + z0 + z1))


@njit(**_JIT)
def widen_pair(a, b, xa, xb, d):  # pragma: no cover - compiled
    """``xa, xb = float64(a), float64(b)`` and ``d = xa - xb``, in one pass (the logits
    rows' inputs; numpy took three, each a trip through memory)."""
    for i in range(a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        xa[i] = x
        xb[i] = y
        d[i] = x - y


LANES = 32
"""Lanes of the logits' row sums. Being compensated, they need no more lanes for accuracy,
only enough independent additions in flight: 32 measured fastest (16 and 64: 5-40 % slower
on 32000-value rows; 127 cost 2-10x on a classifier's short rows, which set up and add up
every lane per row)."""


@njit(**_JIT)
def _lanes_total(acc, comp):  # pragma: no cover - compiled
    """The lanes' compensated sums ``acc - comp`` added up with Kahan compensation; returns
    the total and its compensation, for the row's last partial lanes to continue."""
    t = c = 0.0
    for j in range(LANES):
        y = (acc[j] - comp[j]) - c
        u = t + y
        c = (u - t) - y
        t = u
    return t, c


@njit(**_JIT)
def shift_rows(x, shift, e):  # pragma: no cover - compiled
    """``e[r] = float64(x[r]) - shift[r]`` for each row of the 2-D ``x``: the input of a
    row's ``exp`` (numpy's, vectorised: numba's scalar ``exp`` is 5-10x slower here)."""
    for r in range(x.shape[0]):
        s = shift[r]
        for i in range(x.shape[1]):
            e[r, i] = np.float64(x[r, i]) - s


# The row sums below feed a log-sum-exp whose error is the KL's error (a KL of fp32 noise
# is ~1e-12 and below), so each lane is a Kahan sum: 127 plain lanes, added up one after
# the other, were off by up to 1.5e-15 relative (numpy's pairwise sum 6e-16), compensated
# ones by 2e-16, for ~1.5x the time of a pass that stays in cache.
@njit(**_JIT)
def logit_row_sums(e, a, b, shift_b, s, num):  # pragma: no cover - compiled
    """Per row ``r`` of the 2-D arrays: ``s[r] = sum e[r]``, ``num[r] = sum e[r] (a[r] -
    b[r])`` in float64 (a term where ``a`` is -inf is 0: its probability is 0, whatever
    ``b``), then ``e[r] = b[r] - shift_b[r]`` (the next ``exp``'s input, written where
    ``e`` was just read: one pass instead of two)."""
    v = e.shape[1]
    full = v // LANES
    ls, cs = np.zeros(LANES), np.zeros(LANES)
    ln, cn = np.zeros(LANES), np.zeros(LANES)
    for r in range(e.shape[0]):
        sh = shift_b[r]
        ts = tc = tn = nc = 0.0
        if full:  # rows shorter than the lanes (a classifier's) skip them: no per-row setup
            ls[:] = 0.0
            cs[:] = 0.0
            ln[:] = 0.0
            cn[:] = 0.0
            for k in range(full):
                o = k * LANES
                for j in range(LANES):
                    x = e[r, o + j]
                    y = np.float64(b[r, o + j])
                    z = np.float64(a[r, o + j])
                    p = x * (z - y) if z != -np.inf else 0.0
                    e[r, o + j] = y - sh
                    x -= cs[j]
                    t = ls[j] + x
                    cs[j] = (t - ls[j]) - x
                    ls[j] = t
                    p -= cn[j]
                    t = ln[j] + p
                    cn[j] = (t - ln[j]) - p
                    ln[j] = t
            ts, tc = _lanes_total(ls, cs)
            tn, nc = _lanes_total(ln, cn)
        for i in range(full * LANES, v):  # the partial row, continuing both Kahan sums
            x = e[r, i]
            y = np.float64(b[r, i])
            z = np.float64(a[r, i])
            p = x * (z - y) if z != -np.inf else 0.0
            e[r, i] = y - sh
            x -= tc
            t = ts + x
            tc = (t - ts) - x
            ts = t
            p -= nc
            t = tn + p
            nc = (t - tn) - p
            tn = t
        s[r] = ts
        num[r] = tn


@njit(**_JIT)
def row_sums(e, s):  # pragma: no cover - compiled
    """``s[r] = sum e[r]`` in float64 for each row of the 2-D ``e`` (compensated lanes)."""
    v = e.shape[1]
    full = v // LANES
    acc, comp = np.zeros(LANES), np.zeros(LANES)
    for r in range(e.shape[0]):
        t = c = 0.0
        if full:
            acc[:] = 0.0
            comp[:] = 0.0
            for k in range(full):
                o = k * LANES
                for j in range(LANES):
                    x = e[r, o + j] - comp[j]
                    u = acc[j] + x
                    comp[j] = (u - acc[j]) - x
                    acc[j] = u
            t, c = _lanes_total(acc, comp)
        for i in range(full * LANES, v):
            x = e[r, i] - c
            u = t + x
            c = (u - t) - x
            t = u
        s[r] = t


_PLACEHOLDER = np.zeros(1)


def plain_stats(x, base=0):
    """``fused_stats`` without a sketch: ``(sum, sum of squares, min, max, zeros)``."""
    return fused_stats(x, base, _PLACEHOLDER, _PLACEHOLDER, False)


@njit(**_JIT)
def centred_sum_sq(x, mean):  # pragma: no cover - compiled
    """``sum((x - mean)^2)`` in float64 (the variance of a tensor whose mean dominates)."""
    acc = np.zeros(WIDTH)
    n = x.size
    rows = n // WIDTH
    for r in range(rows):
        b = r * WIDTH
        for j in range(WIDTH):
            d = np.float64(x[b + j]) - mean
            acc[j] += d * d
    for i in range(rows * WIDTH, n):
        d = np.float64(x[i]) - mean
        acc[i - rows * WIDTH] += d * d
    return acc.sum()


@njit(**_JIT)
def _pair_edge(a, b, start, atol, rtol):  # pragma: no cover - compiled
    """``pair_sums`` of the last, partial row ``[start, n)``, scalar (see ``_stats_edge``)."""
    sd2 = sa2 = sb2 = sab = sabs = fails = 0.0
    worst, where = -1.0, 0
    for i in range(start, a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        d = x - y
        ad = abs(d)
        sd2 += d * d
        sa2 += x * x
        sb2 += y * y
        sab += x * y
        sabs += ad
        fails += ad > atol + rtol * abs(x)
        if ad > worst:
            worst, where = ad, i
    return sd2, sa2, sb2, sab, sabs, fails, worst, where


@njit(**_JIT)
def pair_sums(a, b, atol, rtol):  # pragma: no cover - compiled
    """Every tensor metric of a pair in one pass, float64.

    Returns ``(sum d^2, sum a^2, sum b^2, sum a*b, sum |d|, max |d|, index of the first
    max |d|, count of |d| > atol + rtol |a|)`` with ``d = a - b``: the values, up to
    summation order, of the numpy walk in ``compare.metrics`` (the tolerance test is the
    same float64 arithmetic as ``atol + rtol * abs(a)``).
    """
    sd2 = np.zeros(WIDTH)
    sa2 = np.zeros(WIDTH)
    sb2 = np.zeros(WIDTH)
    sab = np.zeros(WIDTH)
    sabs = np.zeros(WIDTH)
    fails = np.zeros(WIDTH)
    worst = np.full(WIDTH, -1.0)
    where = np.zeros(WIDTH, dtype=np.int64)
    full = a.size // WIDTH
    for r in range(full):
        o = r * WIDTH
        for j in range(WIDTH):
            x = np.float64(a[o + j])
            y = np.float64(b[o + j])
            d = x - y
            ad = abs(d)
            sd2[j] += d * d
            sa2[j] += x * x
            sb2[j] += y * y
            sab[j] += x * y
            sabs[j] += ad
            if ad > atol + rtol * abs(x):
                fails[j] += 1.0
            if ad > worst[j]:  # strictly: each column keeps its first maximum
                worst[j] = ad
                where[j] = o + j
    e = _pair_edge(a, b, full * WIDTH, atol, rtol)
    top, at = e[6], e[7]
    for j in range(WIDTH):  # the first maximum overall: the smallest index among ties
        if worst[j] > top or (worst[j] == top and worst[j] >= 0.0 and where[j] < at):
            top, at = worst[j], where[j]
    return (sd2.sum() + e[0], sa2.sum() + e[1], sb2.sum() + e[2], sab.sum() + e[3],
            sabs.sum() + e[4], top, at, int(fails.sum() + e[5]))


def _let_vllm_cpu_scan_llvmlite() -> None:
    """Keep vLLM's CPU platform working in a process that has imported numba.

    vLLM (0.32, CPU platform without Triton: ``vllm/triton_utils/dispatcher.py``,
    ``_rebind_kernels``) scans every module's globals at engine start and, for each value
    that has a ``__dict__``, calls ``vars(value).get("kernel")``. llvmlite's library
    wrapper (``llvmlite.binding.ffi.lib``) answers any attribute, ``__dict__`` included,
    with a wrapped C function, so the scan raised ``AttributeError: '_lib_fn_wrapper'
    object has no attribute 'get'`` and the engine failed to start, for any program that
    imported numba before building an ``LLM`` (a capture of a transformers model first,
    for one). The wrapper caches names in ``_fntab``; an empty dict cached under
    ``__dict__`` (a name llvmlite itself never looks up) is what the scan needs.
    """
    try:
        from llvmlite.binding import ffi
        table = getattr(type(ffi.lib), "__getattr__", None) and ffi.lib.__getattribute__("_fntab")
    except Exception:  # noqa: BLE001 - another llvmlite: nothing to keep working
        return
    if isinstance(table, dict):
        table.setdefault("__dict__", {})


def warm_up() -> None:
    """Compile (or load from numba's cache) every signature the callers use."""
    _let_vllm_cpu_scan_llvmlite()
    signs = np.ones(2)
    sketch = np.zeros(WIDTH)
    for dtype in (np.float32, np.float64):
        x = np.arange(3, dtype=dtype)
        fused_stats(x, 0, signs, sketch, True)
        fused_stats(x, 0, signs, sketch, False)
        centred_sum_sq(x, 1.0)
        out = np.empty(3)
        for other in (np.float32, np.float64):
            pair_sums(x, np.arange(3, dtype=other), 0.0, 0.0)
            widen_pair(x, np.arange(3, dtype=other), out, out.copy(), out.copy())
        rows = x.reshape(1, 3)
        e, one = np.empty((1, 3)), np.zeros(1)
        shift_rows(rows, one, e)
        for other in (np.float32, np.float64):
            logit_row_sums(e, rows, rows.astype(other), one, one.copy(), one.copy())
    row_sums(np.empty((1, 3)), np.zeros(1))
