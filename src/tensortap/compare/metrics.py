"""Error metrics of one aligned pair, accumulated in float64 over chunks.

Chunking keeps the float64 working set small (a few chunk-sized buffers, reused for every
chunk and pair) whatever the tensor size, while sums over float64 chunks stay accurate.
Elements that are NaN or Inf on either side are left out of the numeric metrics and
counted instead: positions where the two runs disagree on NaN/Inf are ``nan_mismatch`` /
``inf_mismatch``.

Definitions (``a`` = run A, the reference; ``d = a - b``):
``max_abs = max|d|``, ``mean_abs = mean|d|``, ``rel_l2 = ||d|| / ||a||``,
``cosine = <a,b> / (||a|| ||b||)``, ``rel_diff = 1 - 2<a,b> / (||a||^2 + ||b||^2)``
(SGLang/DeepGEMM), ``sqnr_db = 20 log10(||a|| / ||d||)``, ``allclose_fail_frac`` = share of
elements with ``|d| > atol + rtol |a|``. Logits add ``top1_agree`` (share of rows whose
argmax agrees) and ``kl`` (mean over rows of KL(softmax a || softmax b)).

Speed (this is most of ``tt.diff``'s time): every metric of a pair comes from one pass
over it. With the compiled kernels (``tensortap.kernels``) that pass is one loop
(``pair_sums``; logits then add their row metrics: three compiled passes around numpy's
vectorised ``exp``); without them, each chunk is widened to float64 once into
preallocated buffers that stay in cache, and logits add their row metrics in the same
walk. Pairs holding NaN/Inf take the walk, which masks them. A pair that is equal
element for element (``torch.equal``, a memcmp-speed test) has known metrics and only
needs ``||a||``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from tensortap import kernels
from tensortap.store.stats import KERNEL_NATIVE, kernel_reads, numpy_view, stat_sums

CHUNK = 1 << 15
"""Elements per float64 chunk: each working buffer is 256 KiB, so the four of them stay in
a core's L2 cache (2 MiB here); larger chunks spill to L3 and measured slower."""


@dataclass
class PairMetrics:
    numel: int = 0
    err: float = 0.0
    """``||a - b||_2`` over finite elements."""
    norm_a: float = 0.0
    norm_b: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    mean_abs: float = 0.0
    fail_frac: float = 0.0
    nan_mismatch: int = 0
    inf_mismatch: int = 0
    worst_flat: int | None = None
    worst_a: float | None = None
    worst_b: float | None = None
    top1_agree: float | None = None
    kl: float | None = None

    @property
    def rel_l2(self) -> float:
        if self.norm_a > 0:
            return self.err / self.norm_a
        return 0.0 if self.err == 0 else math.inf

    @property
    def cosine(self) -> float | None:
        if self.err == 0:  # equal (finite) data: exactly 1, not 1 - 2e-16 from rounding
            return 1.0
        if self.norm_a > 0 and self.norm_b > 0:
            return max(-1.0, min(1.0, self.dot / (self.norm_a * self.norm_b)))
        return None

    @property
    def rel_diff(self) -> float:
        if self.err == 0:  # equal (finite) data: exactly 0, not rounding noise
            return 0.0
        den = self.norm_a ** 2 + self.norm_b ** 2
        return 1.0 - 2.0 * self.dot / den if den > 0 else 0.0

    @property
    def sqnr_db(self) -> float:
        if self.err == 0:
            return math.inf
        if self.norm_a == 0:
            return -math.inf
        return 20.0 * math.log10(self.norm_a / self.err)


# -- float64 working buffers ------------------------------------------------------------------
class _Buffers(threading.local):
    """Per-thread float64 buffers, kept between calls.

    Fresh buffers for every pair would come from mmap (glibc serves allocations this size
    that way) and pay a page fault per 4 KiB on first touch: slower than the arithmetic.
    """

    size = 0
    f64: list[np.ndarray] = []
    mask: np.ndarray = np.empty(0, dtype=bool)

    def get(self, n: int) -> tuple[list[np.ndarray], np.ndarray]:
        if n > self.size:
            self.size = n
            self.f64 = [np.empty(n) for _ in range(4)]
            self.mask = np.empty(n, dtype=bool)
        return self.f64, self.mask


_BUFFERS = _Buffers()

# numpy widens these dtypes to float64 itself (the same rounding as torch); others
# (bfloat16, float8, ...) go through torch's copy.
_NUMPY_WIDENS = {torch.float32, torch.float64, torch.float16, torch.int8, torch.uint8, torch.int16,
                 torch.int32, torch.int64, torch.bool}


_KERNEL_VIA_FLOAT32 = {torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
                       torch.int16, torch.bool}
"""Dtypes exact in float32: a pair of these is converted a piece at a time for the kernel."""
_KERNEL_PIECE = 1 << 18


def _flat(x: torch.Tensor) -> torch.Tensor:
    """Flattened, contiguous (complex: real and imaginary parts interleaved)."""
    x = x.detach()
    if x.is_complex():
        x = torch.view_as_real(x)
    return x.reshape(-1).contiguous()


def _widen(src: torch.Tensor, out: np.ndarray) -> np.ndarray:
    """``src`` (1-D) as float64 in ``out[:len(src)]``."""
    dst = out[:src.numel()]
    if src.dtype in _NUMPY_WIDENS:
        np.copyto(dst, src.numpy(), casting="unsafe")
    else:
        torch.from_numpy(dst).copy_(src)
    return dst


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    # einsum, not `x @ y`: BLAS dot starts threads above ~10k elements, and they contend
    # badly on a busy machine.
    return float(np.einsum("i,i->", x, y))


# -- the metrics ------------------------------------------------------------------------------
def pair_metrics(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float,
                 chunk: int = CHUNK, *, logits: bool = False, maybe_equal: bool = True) -> PairMetrics:
    """Metrics of two tensors of equal shape (any dtypes), in float64 chunk by chunk.

    Args:
        a, b: the pair (run A is the reference).
        atol, rtol: the elementwise tolerance ``allclose_fail_frac`` counts against.
        chunk: elements per float64 chunk.
        logits: also compute ``top1_agree`` and ``kl`` over the last dimension (as
            ``logits_metrics``), in the same pass.
        maybe_equal: False when the caller knows the tensors differ (e.g. their stored
            checksums differ): skips the equality test.

    The chunk arithmetic runs in numpy: single-threaded and memory-bound, it stays fast
    on a busy machine where torch's thread pool would contend.
    """
    fa, fb = _flat(a), _flat(b)
    vocab = _vocab(a) if logits else 0
    if maybe_equal and fa.dtype == fb.dtype and torch.equal(fa, fb):
        m = _identical(fa, fb, chunk)
        if not vocab or m.numel == 0:
            return m
        if _all_finite(fa, chunk):
            # Equal finite rows: every argmax agrees and every KL is exactly 0.
            m.top1_agree, m.kl = 1.0, 0.0
            return m
    m = _kernel_pair(fa, fb, atol, rtol)
    # Both kernel paths read the same dtype pairs: rows is None only when m is too (no
    # kernels), and then the walk takes the logits rows in its own pass.
    rows = _kernel_logit_rows(fa, fb, vocab, max(1, chunk // vocab)) if vocab else None
    if m is None:
        # NaN/Inf present (the walk masks them), or no kernels.
        m = _Walk(fa, fb, atol, rtol, chunk, vocab if rows is None else 0).run()
    if rows is not None:
        m.top1_agree, m.kl = rows.top1_agree, rows.kl
    return m


def _kernel_pieces(fa: torch.Tensor, fb: torch.Tensor, piece: int = _KERNEL_PIECE):
    """``(offset, a, b)`` numpy pieces for the compiled kernel, or None when it cannot read
    the pair exactly (float64 against a narrow dtype, wide integers, float8, ...).

    Dtypes the kernels read as they are come as one piece; others are converted to float32
    ``piece`` elements at a time into ``_BUFFERS``' first two buffers."""
    if fa.dtype in KERNEL_NATIVE and fb.dtype in KERNEL_NATIVE:
        a, b = numpy_view(fa), numpy_view(fb)
        return None if a is None or b is None else [(0, a, b)]
    if fa.dtype not in _KERNEL_VIA_FLOAT32 or fb.dtype not in _KERNEL_VIA_FLOAT32:
        return None

    def widened():
        n = fa.numel()
        size = min(piece, n)
        bufs, _ = _BUFFERS.get(size)
        # Two float32 views into the float64 scratch (half of each buffer's bytes).
        xa = torch.from_numpy(bufs[0].view(np.float32)[:size])
        xb = torch.from_numpy(bufs[1].view(np.float32)[:size])
        for start in range(0, n, piece):
            pa, pb = fa[start:start + piece], fb[start:start + piece]
            yield start, xa[:pa.numel()].copy_(pa).numpy(), xb[:pb.numel()].copy_(pb).numpy()
    return widened()


def _kernel_pair(fa: torch.Tensor, fb: torch.Tensor, atol: float, rtol: float) -> PairMetrics | None:
    """Every tensor metric of the pair through the compiled kernel; None when the walk must
    do it: no kernels, an unsupported dtype pair, or NaN/Inf present (the walk masks them)."""
    n = fa.numel()
    k = kernels.get() if n else None
    pieces = _kernel_pieces(fa, fb) if k is not None else None
    if pieces is None:
        return None
    sd2 = sa2 = sb2 = sab = sabs = 0.0
    fails = 0
    worst, where = -1.0, 0
    for off, a, b in pieces:
        p = k.pair_sums(a, b, atol, rtol)
        sd2, sa2, sb2, sab, sabs = sd2 + p[0], sa2 + p[1], sb2 + p[2], sab + p[3], sabs + p[4]
        fails += p[7]
        if p[5] > worst:  # strictly: the first maximum over pieces, as over chunks
            worst, where = p[5], off + p[6]
    if not all(math.isfinite(v) for v in (sd2, sa2, sb2, sab, sabs)):
        return None
    m = PairMetrics(numel=n, err=math.sqrt(sd2), norm_a=math.sqrt(sa2), norm_b=math.sqrt(sb2), dot=sab,
                    max_abs=max(worst, 0.0), mean_abs=sabs / n, fail_frac=fails / n)
    m.worst_flat, m.worst_a, m.worst_b = where, float(fa[where]), float(fb[where])
    return m


def logits_metrics(a: torch.Tensor, b: torch.Tensor, m: PairMetrics, rows_per_chunk: int | None = None) -> None:
    """Add top-1 agreement and mean KL(softmax a || softmax b) over the last dimension.

    ``pair_metrics(..., logits=True)`` computes the same in its own pass; this is for a
    caller that has the tensor metrics already.
    """
    vocab = _vocab(a)
    if not vocab:
        return
    rows = rows_per_chunk or max(1, CHUNK // vocab)
    fa, fb = _flat(a), _flat(b)
    got = _kernel_logit_rows(fa, fb, vocab, rows)
    if got is None:
        got = _Walk(fa, fb, 0.0, 0.0, rows * vocab, vocab, logits_only=True).run()
    m.top1_agree, m.kl = got.top1_agree, got.kl


def _kernel_logit_rows(fa: torch.Tensor, fb: torch.Tensor, vocab: int, rows: int) -> PairMetrics | None:
    """Top-1 agreement and KL through the compiled kernels, ``rows`` rows at a time; None
    when the walk must do it (no kernels, or a dtype pair they cannot read exactly).

    The same definitions as ``_Walk._logit_rows``, in fewer passes: the argmax runs on the
    stored dtype (widening to float64 keeps the order, and numpy's argmax returns the first
    NaN either way), each row is shifted by its maximum while it is widened, and one pass
    takes both sums of A's exponentials while it writes B's shifted row. NaN/Inf are
    handled as in the walk: a token that is -inf in A adds nothing, any other makes the
    KL non-finite (``kl`` is then None).
    """
    k = kernels.get()
    n = fa.numel()
    # Whole rows per piece; bfloat16 and the like are converted to float32 a piece at a time.
    piece = max(rows, _KERNEL_PIECE // vocab) * vocab
    pieces = _kernel_pieces(fa, fb, piece) if k is not None and n else None
    if pieces is None:
        return None
    bufs, _ = _BUFFERS.get(min(piece, n))  # the pieces' scratch is bufs[0:2]; e is bufs[2]
    total = n // vocab
    m = PairMetrics(numel=n)
    agree, kl_sum = 0, 0.0
    with np.errstate(all="ignore"):
        for _, pa, pb in pieces:
            pa, pb = pa.reshape(-1, vocab), pb.reshape(-1, vocab)
            for r0 in range(0, pa.shape[0], rows):
                ra, rb = pa[r0:r0 + rows], pb[r0:r0 + rows]
                nr = ra.shape[0]
                e = bufs[2][:nr * vocab].reshape(nr, vocab)
                s_a, num, s_b = np.empty((3, nr))
                top_a, top_b = np.argmax(ra, axis=1), np.argmax(rb, axis=1)
                agree += int(np.count_nonzero(top_a == top_b))
                at = np.arange(nr)
                shift_a, shift_b = ra[at, top_a].astype(np.float64), rb[at, top_b].astype(np.float64)
                k.shift_rows(ra, shift_a, e)
                np.exp(e, out=e)
                k.logit_row_sums(e, ra, rb, shift_b, s_a, num)
                np.exp(e, out=e)
                k.row_sums(e, s_b)
                kl_sum += _rows_kl(num, s_a, s_b, shift_a, shift_b)
    m.top1_agree = agree / total
    kl = kl_sum / total
    m.kl = kl if math.isfinite(kl) else None
    return m


def _vocab(a: torch.Tensor) -> int:
    """The row length logits metrics use, or 0 when the tensor has no usable rows."""
    if a.dim() < 1 or a.shape[-1] < 2 or a.numel() == 0:
        return 0
    return int(a.shape[-1])


def _identical(fa: torch.Tensor, fb: torch.Tensor, chunk: int) -> PairMetrics:
    """Metrics of an equal pair: everything follows from ``||a||`` (finite elements).

    The values are those the full walk gives: ``d`` is 0 everywhere, so the worst element
    is the first one, as ``argmax`` of a zero chunk says.
    """
    n = fa.numel()
    m = PairMetrics(numel=n)
    if n == 0:
        return m
    m.worst_flat, m.worst_a, m.worst_b = 0, float(fa[0]), float(fb[0])
    if kernels.get() is not None and kernel_reads(fa.dtype):
        # The store's one-pass statistics give ||a||^2 (one side: converted once, not twice).
        sa2 = stat_sums(fa).sumsq
        if math.isfinite(sa2):
            m.norm_a = m.norm_b = math.sqrt(sa2)
            m.dot = sa2
            return m
    (xa, *_), _ = _BUFFERS.get(min(chunk, n))
    sa2 = 0.0
    with np.errstate(all="ignore"):
        for start in range(0, n, chunk):
            x = _widen(fa[start:start + chunk], xa)
            v = _dot(x, x)
            if not math.isfinite(v):  # NaN/Inf (equal on both sides, so no mismatch): skip them
                x = np.where(np.isfinite(x), x, 0.0)
                v = _dot(x, x)
            sa2 += v
    m.norm_a = m.norm_b = math.sqrt(sa2)
    m.dot = sa2
    return m


def _all_finite(fa: torch.Tensor, chunk: int) -> bool:
    if not fa.is_floating_point():
        return True
    return all(bool(torch.isfinite(fa[s:s + chunk]).all()) for s in range(0, fa.numel(), chunk))


class _Walk:
    """One pass over a pair, chunk by chunk, accumulating every metric in float64."""

    def __init__(self, fa: torch.Tensor, fb: torch.Tensor, atol: float, rtol: float, chunk: int,
                 vocab: int = 0, logits_only: bool = False) -> None:
        self.fa, self.fb, self.atol, self.rtol = fa, fb, atol, rtol
        self.vocab, self.logits_only = vocab, logits_only
        # Logits are walked in whole rows (at least one, whatever its length).
        self.chunk = max(1, chunk // vocab) * vocab if vocab else chunk
        n = fa.numel()
        self.m = PairMetrics(numel=n)
        self.sd2 = self.sa2 = self.sb2 = self.sab = self.sabs = 0.0
        self.fails = self.finite_n = 0
        self.worst = -1.0
        self.agree = 0
        self.kl_sum = 0.0

    def run(self) -> PairMetrics:
        n, chunk = self.fa.numel(), self.chunk
        bufs, mask = _BUFFERS.get(min(chunk, n)) if n else ([], None)
        # The same float64 values in one compiled pass where the kernels read both dtypes.
        k = kernels.get() if self.fa.dtype in KERNEL_NATIVE and self.fb.dtype in KERNEL_NATIVE else None
        # NaN/Inf are expected input (counted or propagated below); numpy must not warn about them.
        with np.errstate(all="ignore"):
            for start in range(0, n, chunk):
                pa, pb = self.fa[start:start + chunk], self.fb[start:start + chunk]
                if k is not None and (a := numpy_view(pa)) is not None and (b := numpy_view(pb)) is not None:
                    xa, xb, d = bufs[0][:a.size], bufs[1][:a.size], bufs[2][:a.size]
                    k.widen_pair(a, b, xa, xb, d)
                else:
                    xa = _widen(pa, bufs[0])
                    xb = _widen(pb, bufs[1])
                    d = np.subtract(xa, xb, out=bufs[2][:xa.size])
                if self.vocab:
                    self._logit_rows(xa, xb, d, bufs[3][:xa.size])
                if not self.logits_only:
                    self._tensor_chunk(start, xa, xb, d, bufs[3][:xa.size], mask[:xa.size])
        return self._finish()

    def _tensor_chunk(self, start: int, xa: np.ndarray, xb: np.ndarray, d: np.ndarray,
                      tmp: np.ndarray, mask: np.ndarray) -> None:
        part = (_dot(d, d), _dot(xa, xa), _dot(xb, xb), _dot(xa, xb))
        if not all(math.isfinite(v) for v in part):
            # Rare: NaN/Inf somewhere (or float64 data near overflow). Mask them out.
            xa, xb, d = self._mask_nonfinite(xa, xb)
            part = (_dot(d, d), _dot(xa, xa), _dot(xb, xb), _dot(xa, xb))
        else:
            self.finite_n += xa.size
        self.sd2 += part[0]
        self.sa2 += part[1]
        self.sb2 += part[2]
        self.sab += part[3]
        np.abs(d, out=d)
        self.sabs += float(d.sum())
        i = int(np.argmax(d))
        v = float(d[i])
        if v > self.atol:
            # Only then can an element fail |d| <= atol + rtol |a| (same float64 arithmetic
            # as `atol + rtol * np.abs(xa)`, in a reused buffer).
            lim = np.abs(xa, out=tmp)
            np.multiply(lim, self.rtol, out=lim)
            np.add(lim, self.atol, out=lim)
            self.fails += int(np.count_nonzero(np.greater(d, lim, out=mask)))
        if v > self.worst:
            m = self.m
            self.worst = v
            m.worst_flat = start + i
            m.worst_a, m.worst_b = float(self.fa[start + i]), float(self.fb[start + i])

    def _mask_nonfinite(self, xa: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count NaN/Inf disagreements; the chunk with non-finite elements zeroed on both sides."""
        m = self.m
        fin = np.isfinite(xa) & np.isfinite(xb)
        nan_a, nan_b = np.isnan(xa), np.isnan(xb)
        m.nan_mismatch += int(np.count_nonzero(nan_a != nan_b))
        inf_a, inf_b = np.isinf(xa), np.isinf(xb)
        # Same-signed infinities agree; an inf against a finite value or -inf does not.
        m.inf_mismatch += int(np.count_nonzero((inf_a | inf_b) & ~(nan_a | nan_b) & (xa != xb)))
        self.finite_n += int(np.count_nonzero(fin))
        xa, xb = np.where(fin, xa, 0.0), np.where(fin, xb, 0.0)
        return xa, xb, xa - xb

    def _logit_rows(self, xa: np.ndarray, xb: np.ndarray, d: np.ndarray, tmp: np.ndarray) -> None:
        """Top-1 agreement and KL of the chunk's rows (before any NaN/Inf masking).

        ``KL = sum p_a (log p_a - log p_b)`` with ``log p = x - lse(x)`` and ``sum p_a = 1``
        is ``sum p_a (x_a - x_b) - (lse_a - lse_b)``: two exponentials per element instead
        of log_softmax twice and an exp. A token that is -inf in A adds nothing (``p_a = 0``);
        any other NaN/Inf makes the row's KL non-finite (``kl`` is then None): a NaN, a row
        that is -inf throughout, +inf, or -inf in B where A is finite (the KL is infinite).
        """
        v = self.vocab
        ra, rb, rd, e = xa.reshape(-1, v), xb.reshape(-1, v), d.reshape(-1, v), tmp.reshape(-1, v)
        top_a, top_b = np.argmax(ra, axis=1), np.argmax(rb, axis=1)
        self.agree += int(np.count_nonzero(top_a == top_b))
        rows = np.arange(ra.shape[0])
        shift_a, shift_b = ra[rows, top_a], rb[rows, top_b]
        s_a = _exp_rows(ra, shift_a, e)
        num = np.einsum("ij,ij->i", e, rd)  # sum exp(x_a - shift_a) (x_a - x_b), per row
        bad = ~np.isfinite(num)
        if bad.any():
            # A token whose logit in A is -inf has p_a = 0 and adds nothing, even where B's
            # is -inf too (a token masked in both runs): 0 * -inf must not make it NaN.
            num[bad] = np.where(np.isneginf(ra[bad]), 0.0, e[bad] * rd[bad]).sum(axis=1)
        s_b = _exp_rows(rb, shift_b, e)
        self.kl_sum += _rows_kl(num, s_a, s_b, shift_a, shift_b)

    def _finish(self) -> PairMetrics:
        m, n = self.m, self.fa.numel()
        if self.vocab:
            rows = n // self.vocab
            m.top1_agree = self.agree / rows
            kl = self.kl_sum / rows
            m.kl = kl if math.isfinite(kl) else None
        if self.logits_only:
            return m
        m.err, m.norm_a, m.norm_b, m.dot = math.sqrt(self.sd2), math.sqrt(self.sa2), math.sqrt(self.sb2), self.sab
        m.max_abs = max(self.worst, 0.0)
        m.mean_abs = self.sabs / self.finite_n if self.finite_n else 0.0
        m.fail_frac = self.fails / n if n else 0.0
        return m


def _exp_rows(x: np.ndarray, mx: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = exp(x - mx)`` per row (``mx``: each row's maximum); returns the rows' sums."""
    np.subtract(x, mx[:, None], out=out)
    np.exp(out, out=out)
    return np.sum(out, axis=1)


def _rows_kl(num: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, shift_a: np.ndarray,
             shift_b: np.ndarray) -> float:
    """Sum over rows of ``KL = num/s_a - (lse_a - lse_b)`` with ``lse = shift + log(s)``.

    The log-sum-exp difference is taken as ``(shift_a - shift_b) + log(s_a / s_b)``, not as
    a difference of two log-sum-exps: each of those is rounded at its own magnitude (~1e-15
    for the ~9-40 of typical logits), while the shifts' difference is exact (they are
    stored values, close) and each ``s`` lies in ``[1, vocab]`` (shifted by the row
    maximum), so the ratio cannot overflow and its log is accurate to ~1e-16. That error
    is what remains of a KL of fp32 noise (1e-12 and below).
    """
    return float(np.sum(num / s_a - ((shift_a - shift_b) + np.log(s_a / s_b))))


def norm_of_difference(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> float:
    """``||a - b||_2`` in float64 over elements finite on both sides (for noise floors)."""
    fa, fb = _flat(a), _flat(b)
    n = fa.numel()
    if n == 0:
        return 0.0
    m = _kernel_pair(fa, fb, 0.0, 0.0)
    if m is not None:
        return m.err
    bufs, _ = _BUFFERS.get(min(chunk, n))
    total = 0.0
    with np.errstate(all="ignore"):
        for start in range(0, n, chunk):
            xa = _widen(fa[start:start + chunk], bufs[0])
            xb = _widen(fb[start:start + chunk], bufs[1])
            d = np.subtract(xa, xb, out=bufs[2][:xa.size])
            v = _dot(d, d)
            if not math.isfinite(v):
                d = np.where(np.isfinite(xa) & np.isfinite(xb), d, 0.0)
                v = _dot(d, d)
            total += v
    return math.sqrt(total)
