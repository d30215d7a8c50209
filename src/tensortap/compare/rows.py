"""Per-token (per-row) error of an aligned pair.

A whole-tensor ``rel_l2`` is dominated by the rows with the largest norm: in a real model
one token (often the first) carries "massive activations" hundreds of times the others',
so the residual stream's ``rel_l2`` measures that token alone, and a module that
normalises rows (RMSNorm) seems to amplify error that it only re-weights. Judging each
row on its own scale avoids both: ``rel[t] = ||a_t - b_t|| / ||a_t||``.

Rows are the token rows when the pair was aligned by the token table (or both tensors
have the step's token layout), otherwise every vector along the last dimension. Tensors
of one dimension, or whose last dimension is shorter than ``MIN_ROW``, are one row: a
relative error over a handful of elements is an elementwise one, which rounding near
zero makes meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tensortap.compare.align import Aligned, TokenKey

MIN_ROW = 16
"""Fewest elements a row must have to be judged on its own."""

_CHUNK = 1 << 16
"""Elements widened to float64 at a time (bounded memory whatever the tensor's size)."""


@dataclass
class RowErrors:
    """Per-row ``||a_t - b_t||`` and ``||a_t||`` (float64) and, when rows are tokens, their keys."""

    err: np.ndarray
    norm: np.ndarray
    keys: list[TokenKey] | None = None

    def __len__(self) -> int:
        return int(self.err.shape[0])

    def rel(self) -> np.ndarray:
        """Relative error per row (a row that is zero in A has error 0 when B's is zero too,
        else infinite)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.norm > 0, self.err / np.where(self.norm > 0, self.norm, 1.0),
                            np.where(self.err > 0, np.inf, 0.0))

    def key(self, row: int) -> TokenKey | None:
        return self.keys[row] if self.keys is not None and 0 <= row < len(self.keys) else None


def _rows_view(al: Aligned) -> tuple[torch.Tensor, torch.Tensor, list[TokenKey] | None]:
    a, b = al.a, al.b
    plan = al.plan
    if al.how == "tokens" and plan is not None and a.dim() == 2:
        return a, b, list(plan.keys)
    if plan is not None and plan.identity:
        batch = plan.batch_a
        shape = tuple(al.shape_a)
        if len(shape) > len(batch) and shape[:len(batch)] == batch and a.numel() == math.prod(shape):
            rows = math.prod(batch)
            return a.reshape(rows, -1), b.reshape(rows, -1), list(plan.keys)
    if a.dim() >= 2 and a.shape[-1] >= MIN_ROW:
        return a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), None
    return a.reshape(1, -1), b.reshape(1, -1), None


def row_errors(al: Aligned, keys: list[TokenKey] | None = None, finite: bool = False) -> RowErrors | None:
    """Per-row errors of an aligned floating pair; None for non-floating data.

    ``keys``: the token of each row of ``al.a`` when the caller knows them (tensors an
    anchor adapter built with their rows already lined up). ``finite``: the caller knows
    neither tensor holds NaN/Inf (their stored statistics say so), so nothing is masked."""
    if not (al.a.is_floating_point() and al.b.is_floating_point()):
        return None
    if keys is not None and al.a.dim() == 2 and al.a.shape[0] == len(keys):
        a, b = al.a, al.b
    else:
        a, b, keys = _rows_view(al)
    n_rows = a.shape[0]
    if n_rows == 0:
        return RowErrors(np.zeros(0), np.zeros(0), keys)
    width = max(1, a.shape[1]) if a.dim() == 2 else 1
    err = np.empty(n_rows)
    norm = np.empty(n_rows)
    step = max(1, _CHUNK // width)
    for lo in range(0, n_rows, step):
        ca = a[lo:lo + step].to(torch.float64)
        d = ca - b[lo:lo + step].to(torch.float64)
        if not finite:
            # NaN/Inf are counted by the tensor metrics; here they would poison whole rows.
            ok = torch.isfinite(ca) & torch.isfinite(d)
            d = torch.where(ok, d, 0.0)
            ca = torch.where(ok, ca, 0.0)
        err[lo:lo + step] = torch.linalg.vector_norm(d, dim=1).numpy()
        norm[lo:lo + step] = torch.linalg.vector_norm(ca, dim=1).numpy()
    if keys is not None and len(keys) != n_rows:
        keys = None
    return RowErrors(err, norm, keys)
