"""Lining up two tensors of a pair: token rows by ``(request, position)``, leading singleton dims.

Token-major tensors (``[B, T, ...]`` in transformers, ``[tokens, ...]`` in vLLM) are
aligned by the step's token tables, never by row number: rows are matched by
``(request, position)`` and padding rows (request -1, whose values are never used) are
left out. Other tensors are compared as they are, or after dropping leading singleton
dimensions (``[1, T, H]`` vs ``[T, H]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

TokenKey = tuple[int, int]


@dataclass(frozen=True)
class RowPlan:
    """Which rows of a step's token-major tensors to compare, in A's row order."""

    batch_a: tuple[int, ...]
    batch_b: tuple[int, ...]
    idx_a: torch.Tensor
    idx_b: torch.Tensor
    keys: list[TokenKey]
    identity: bool
    """Both runs have the same rows in the same order and no padding: nothing to select."""
    note: str | None = None


def _table_rows(table: dict[str, Any] | None) -> tuple[tuple[int, ...], list[TokenKey | None]] | None:
    if not isinstance(table, dict):
        return None
    req, pos = table.get("request"), table.get("position")
    if not isinstance(req, list) or not isinstance(pos, list) or len(req) != len(pos) or not req:
        return None
    shape = table.get("batch_shape") or [len(req)]
    try:
        batch = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None
    if math.prod(batch) != len(req):
        return None
    keys: list[TokenKey | None] = []
    for r, p in zip(req, pos):
        if not isinstance(r, int) or not isinstance(p, int):
            return None
        keys.append((r, p) if r >= 0 else None)
    return batch, keys


def row_plan(table_a: dict | None, table_b: dict | None) -> RowPlan | None:
    """The row alignment of one step, or None when either run has no usable token table."""
    ta, tb = _table_rows(table_a), _table_rows(table_b)
    if ta is None or tb is None:
        return None
    (batch_a, keys_a), (batch_b, keys_b) = ta, tb
    where_b: dict[TokenKey, int] = {}
    for i, k in enumerate(keys_b):
        if k is not None and k not in where_b:
            where_b[k] = i
    idx_a, idx_b, keys = [], [], []
    seen: set[TokenKey] = set()
    for i, k in enumerate(keys_a):
        if k is None or k in seen or k not in where_b:
            continue
        seen.add(k)
        idx_a.append(i)
        idx_b.append(where_b[k])
        keys.append(k)
    identity = (batch_a == batch_b and len(keys) == len(keys_a) == len(keys_b)
                and idx_a == list(range(len(keys_a))) and idx_b == idx_a)
    valid_a = sum(k is not None for k in keys_a)
    valid_b = sum(k is not None for k in keys_b)
    note = None
    if len(keys) < max(valid_a, valid_b):
        note = f"{len(keys)} token(s) in common of {valid_a} in A and {valid_b} in B"
    return RowPlan(batch_a, batch_b, torch.tensor(idx_a, dtype=torch.long),
                   torch.tensor(idx_b, dtype=torch.long), keys, identity, note)


@dataclass
class Aligned:
    """Two tensors of equal shape, ready to compare, and how to find an element back in A."""

    a: torch.Tensor
    b: torch.Tensor
    how: str
    """``same``, ``tokens`` (rows matched by request/position) or ``squeezed``."""
    shape_a: tuple[int, ...]
    plan: RowPlan | None = None

    def locate(self, flat: int) -> tuple[list[int], TokenKey | None]:
        """Index in A's original tensor of the aligned flat element ``flat``, and its token."""
        if self.how == "tokens" and self.plan is not None:
            feat = max(self.a.shape[1], 1) if self.a.dim() > 1 else 1
            row, col = divmod(flat, feat)
            orig = int(self.plan.idx_a[row]) * feat + col
            return _unravel(orig, self.shape_a), self.plan.keys[row]
        token = None
        if self.plan is not None and self.plan.identity and tuple(self.shape_a[:len(self.plan.batch_a)]) == self.plan.batch_a:
            feat = math.prod(self.shape_a[len(self.plan.batch_a):])
            token = self.plan.keys[flat // max(feat, 1)]
        return _unravel(flat, self.shape_a), token


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for s in reversed(shape):
        flat, r = divmod(flat, s) if s else (flat, 0)
        out.append(r)
    return list(reversed(out))


def _strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return shape[i:]


def _fits(shape: tuple[int, ...], batch: tuple[int, ...]) -> bool:
    return len(shape) >= len(batch) and tuple(shape[: len(batch)]) == batch


def align(a: torch.Tensor, b: torch.Tensor, plan: RowPlan | None) -> Aligned | str:
    """Line up ``a`` and ``b``; a string says why they cannot be compared (a shape mismatch)."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    if (plan is not None and not plan.identity and _fits(sa, plan.batch_a) and _fits(sb, plan.batch_b)
            and sa[len(plan.batch_a):] == sb[len(plan.batch_b):]):
        rows_a, rows_b = math.prod(plan.batch_a), math.prod(plan.batch_b)
        a2 = a.reshape(rows_a, -1).index_select(0, plan.idx_a)
        b2 = b.reshape(rows_b, -1).index_select(0, plan.idx_b)
        return Aligned(a2, b2, "tokens", sa, plan)
    if sa == sb:
        return Aligned(a, b, "same", sa, plan)
    ta, tb = _strip_leading_ones(sa), _strip_leading_ones(sb)
    if ta == tb:
        return Aligned(a.reshape(ta), b.reshape(tb), "squeezed", sa, None)
    return f"shape {list(sa)} vs {list(sb)}"
