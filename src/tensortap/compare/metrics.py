"""Error metrics of one aligned pair, accumulated in float64 over chunks.

Chunking keeps the float64 working set small (a few chunk-sized temporaries) whatever
the tensor size, while sums over float64 chunks stay accurate. Elements that are NaN or
Inf on either side are left out of the numeric metrics and counted instead: positions
where the two runs disagree on NaN/Inf are ``nan_mismatch`` / ``inf_mismatch``.

Definitions (``a`` = run A, the reference; ``d = a - b``):
``max_abs = max|d|``, ``mean_abs = mean|d|``, ``rel_l2 = ||d|| / ||a||``,
``cosine = <a,b> / (||a|| ||b||)``, ``rel_diff = 1 - 2<a,b> / (||a||^2 + ||b||^2)``
(SGLang/DeepGEMM), ``sqnr_db = 20 log10(||a|| / ||d||)``, ``allclose_fail_frac`` = share of
elements with ``|d| > atol + rtol |a|``. Logits add ``top1_agree`` (share of rows whose
argmax agrees) and ``kl`` (mean over rows of KL(softmax a || softmax b)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 1 << 18  # elements per float64 chunk (2 MiB: stays in cache)


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
        if self.norm_a > 0 and self.norm_b > 0:
            return max(-1.0, min(1.0, self.dot / (self.norm_a * self.norm_b)))
        return 1.0 if self.err == 0 else None

    @property
    def rel_diff(self) -> float:
        den = self.norm_a ** 2 + self.norm_b ** 2
        return 1.0 - 2.0 * self.dot / den if den > 0 else 0.0

    @property
    def sqnr_db(self) -> float:
        if self.err == 0:
            return math.inf
        if self.norm_a == 0:
            return -math.inf
        return 20.0 * math.log10(self.norm_a / self.err)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    # einsum, not `x @ y`: BLAS dot starts threads that contend badly on a busy machine.
    return float(np.einsum("i,i->", x, y))


def _chunk64(x: torch.Tensor) -> np.ndarray:
    """A chunk as a float64 numpy array (complex: real and imaginary parts interleaved)."""
    if x.is_complex():
        x = torch.view_as_real(x).reshape(-1)
    if x.dtype == torch.float32:
        return x.numpy().astype(np.float64)
    return x.to(torch.float64).numpy()


def pair_metrics(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float,
                 chunk: int = CHUNK) -> PairMetrics:
    """Metrics of two tensors of equal shape (any dtypes), in float64 chunk by chunk.

    The chunk arithmetic runs in numpy: single-threaded and memory-bound, it stays fast
    on a busy machine where torch's thread pool would contend.
    """
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    if fa.is_complex() or fb.is_complex():
        fa = torch.view_as_real(fa).reshape(-1) if fa.is_complex() else fa
        fb = torch.view_as_real(fb).reshape(-1) if fb.is_complex() else fb
    n = fa.numel()
    m = PairMetrics(numel=n)
    sd2 = sa2 = sb2 = sab = sabs = 0.0
    fails = finite_n = 0
    worst = -1.0
    # NaN/Inf are expected input (counted below); numpy must not warn about them.
    with np.errstate(all="ignore"):
        for start in range(0, n, chunk):
            xa, xb = _chunk64(fa[start:start + chunk]), _chunk64(fb[start:start + chunk])
            d = xa - xb
            part = (_dot(d, d), _dot(xa, xa), _dot(xb, xb), _dot(xa, xb))
            if not all(math.isfinite(v) for v in part):
                # Rare: NaN/Inf somewhere (or float64 data near overflow). Mask them out.
                fin = np.isfinite(xa) & np.isfinite(xb)
                nan_a, nan_b = np.isnan(xa), np.isnan(xb)
                m.nan_mismatch += int(np.count_nonzero(nan_a != nan_b))
                inf_a, inf_b = np.isinf(xa), np.isinf(xb)
                # Same-signed infinities agree; an inf against a finite value or -inf does not.
                m.inf_mismatch += int(np.count_nonzero((inf_a | inf_b) & ~(nan_a | nan_b) & (xa != xb)))
                xa, xb = np.where(fin, xa, 0.0), np.where(fin, xb, 0.0)
                d = xa - xb
                part = (_dot(d, d), _dot(xa, xa), _dot(xb, xb), _dot(xa, xb))
                finite_n += int(np.count_nonzero(fin))
            else:
                finite_n += xa.size
            sd2, sa2, sb2, sab = sd2 + part[0], sa2 + part[1], sb2 + part[2], sab + part[3]
            np.abs(d, out=d)
            sabs += float(d.sum())
            if d.size:
                i = int(np.argmax(d))
                v = float(d[i])
                if v > atol:
                    # Only then can an element fail |d| <= atol + rtol |a|.
                    fails += int(np.count_nonzero(d > atol + rtol * np.abs(xa)))
                if v > worst:
                    worst = v
                    m.worst_flat = start + i
                    m.worst_a, m.worst_b = float(fa[start + i]), float(fb[start + i])
    m.err, m.norm_a, m.norm_b, m.dot = math.sqrt(sd2), math.sqrt(sa2), math.sqrt(sb2), sab
    m.max_abs = max(worst, 0.0)
    m.mean_abs = sabs / finite_n if finite_n else 0.0
    m.fail_frac = fails / n if n else 0.0
    return m


def norm_of_difference(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> float:
    """``||a - b||_2`` in float64 over elements finite on both sides (for noise floors)."""
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    total = 0.0
    for start in range(0, fa.numel(), chunk):
        xa, xb = _chunk64(fa[start:start + chunk]), _chunk64(fb[start:start + chunk])
        with np.errstate(all="ignore"):
            d = xa - xb
            v = _dot(d, d)
        if not math.isfinite(v):
            d = np.where(np.isfinite(xa) & np.isfinite(xb), d, 0.0)
            v = _dot(d, d)
        total += v
    return math.sqrt(total)


def logits_metrics(a: torch.Tensor, b: torch.Tensor, m: PairMetrics, rows_per_chunk: int | None = None) -> None:
    """Add top-1 agreement and mean KL(softmax a || softmax b) over the last dimension."""
    if a.dim() < 1 or a.shape[-1] < 2 or a.numel() == 0:
        return
    vocab = a.shape[-1]
    ra, rb = a.reshape(-1, vocab), b.reshape(-1, vocab)
    step = rows_per_chunk or max(1, CHUNK // vocab)
    agree, kl_sum, rows = 0, 0.0, ra.shape[0]
    for s in range(0, rows, step):
        xa = ra[s:s + step].to(torch.float64)
        xb = rb[s:s + step].to(torch.float64)
        agree += int((xa.argmax(-1) == xb.argmax(-1)).sum())
        la, lb = torch.log_softmax(xa, -1), torch.log_softmax(xb, -1)
        kl_sum += float((la.exp() * (la - lb)).sum())
    m.top1_agree = agree / rows
    kl = kl_sum / rows
    m.kl = kl if math.isfinite(kl) else None
