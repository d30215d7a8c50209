"""Anchors across two runs: evaluating an adapter's anchor expressions on a run's records,
naming each row's token, and checking the residual-stream identities.

The vocabulary (anchor names, ``Ref``, ``AnchorExpr``, ``AnchorSet``, ``RecordIndex``) is
the engine adapters' contract (integrations/anchors/vocab.py); the alignment of two runs
anchor by anchor is compare/anchor_mapping.py. This module knows no engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensortap.integrations.anchors.vocab import AnchorExpr, AnchorSet, RecordIndex, identity_rules
from tensortap.store.reader import Run


def evaluate(index: RecordIndex, step: int, expr: AnchorExpr) -> torch.Tensor | None:
    """The anchor's tensor (float64) at ``step``, or None when a term has no data."""
    pieces = []
    for rank in expr.ranks:
        total = None
        for ref in expr.terms:
            rec = index.get(step, ref, rank)
            if rec is None or not rec.has_data:
                return None
            t = index.run.load(rec).to(torch.float64)
            total = t if total is None else total + t
        if expr.heads_first and total.dim() == 4:
            total = total.transpose(1, 2)
        if expr.cols is not None:
            total = total[..., list(expr.cols)]
        elif expr.start is not None or expr.stop is not None:
            total = total[..., expr.start:expr.stop]
        pieces.append(total)
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
    if expr.scale is not None:
        out = out * expr.scale
    if expr.softcap is not None:
        out = torch.tanh(out / expr.softcap) * expr.softcap
    return out


TokenKey = tuple[int, int]


def row_keys_for_shape(table: dict | None, shape: tuple[int, ...], rows: str
                       ) -> tuple[int, list[TokenKey | None]] | None:
    """Name each row of a tensor of ``shape``: ``(n_rows, [(request, position) or None])``.

    ``rows="tokens"``: the leading dims are the token table's ``batch_shape`` (or, for
    transformers' logits over the last k columns only, ``[B, k]``). ``rows="last"``: one
    row per request, in order of first appearance, keyed by its last position (vLLM's
    logits). Padding rows are None. None when the shape does not fit the table.
    """
    if not isinstance(table, dict):
        return None
    req = table.get("request") or []
    pos = table.get("position") or []
    batch = [int(x) for x in table.get("batch_shape") or [len(req)]]
    keys = [(r, p) if r >= 0 else None for r, p in zip(req, pos)]
    if rows == "last":
        last: dict[int, int] = {}
        for k in keys:
            if k is not None:
                last[k[0]] = max(last.get(k[0], -1), k[1])
        if not shape or shape[0] != len(last):
            return None
        return len(last), list(last.items())
    if list(shape[: len(batch)]) == batch:
        return len(keys), keys
    if len(shape) > len(batch) and shape[0] == 1 and list(shape[1:1 + len(batch)]) == batch:
        return len(keys), keys              # vLLM's Transformers backend: [1, tokens, hidden]
    if len(batch) > 1 and len(shape) >= 2 and shape[0] == len(keys):
        return len(keys), keys              # tokens flattened to one dim (MoE routers, experts)
    if len(batch) == 2 and len(shape) >= 3 and shape[0] == batch[0] and shape[1] < batch[1]:
        k = shape[1]
        cols = [keys[b * batch[1] + c] for b in range(batch[0]) for c in range(batch[1] - k, batch[1])]
        return len(cols), cols
    return None


def row_keys(run: Run, step: int, tensor: torch.Tensor, rows: str, rank: int = 0
             ) -> tuple[torch.Tensor, list[TokenKey | None]] | None:
    """Reshape ``tensor`` to ``[rows, features]`` with each row's token key (see row_keys_for_shape)."""
    named = row_keys_for_shape(run.tokens(step, rank), tuple(tensor.shape), rows)
    if named is None:
        return None
    n, keys = named
    return tensor.reshape(n, -1), keys


def token_matrix(index: RecordIndex, set_: AnchorSet, anchor: str, rank: int = 0
                 ) -> dict[TokenKey, tuple[int, torch.Tensor]]:
    """Every token's vector for one anchor, across all steps: ``key -> (step, row)``.

    A token is computed once (prefill or decode), so aligning by token rather than by
    step makes runs with different scheduling (chunked prefill, batching) comparable.
    """
    out: dict[TokenKey, tuple[int, torch.Tensor]] = {}
    for (step, a), expr in sorted(set_.points.items()):
        if a != anchor:
            continue
        t = evaluate(index, step, expr)
        if t is None:
            continue
        rk = row_keys(index.run, step, t, expr.rows, rank)
        if rk is None:
            continue
        mat, keys = rk
        for i, key in enumerate(keys):
            if key is not None and key not in out:
                out[key] = (step, mat[i])
    return out


@dataclass
class IdentityCheck:
    """Result of checking e.g. ``resid_mid == resid_pre + attn_out`` on one engine's records."""

    engine: str
    identity: str
    step: int
    rel_err: float
    ok: bool


IDENTITY_TOL = {"float64": 1e-10, "float32": 1e-4}
IDENTITY_TOL_LOW = 3e-2
"""16-bit and 8-bit floats: the engine rounds each sum, so the identity holds to ~2**-8."""


def identity_tolerance(dtype: str | None) -> float:
    return IDENTITY_TOL.get(dtype or "float32", IDENTITY_TOL_LOW)


def check_identities(index: RecordIndex, set_: AnchorSet, tol: float | None = None) -> list[IdentityCheck]:
    """Verify the residual-stream identities on one run's own records (``tol``: by dtype).

    Which identities a layer has follows its structure (vocab.identity_rules): Gemma's
    residual adds the post-norms, a parallel-residual layer adds attention and MLP to the
    same input.
    """
    present = {a for _, a in set_.points}
    layers = sorted({int(a.split(".")[1]) for a in present if a.startswith("layers.")})
    rules = [r for i in layers for r in identity_rules(i, present, set_.parallel_residual)]
    out = []
    for step in set_.steps():
        for total, terms in rules:
            exprs = [set_.points.get((step, n)) for n in (total, *terms)]
            if any(e is None for e in exprs):
                continue
            ts = [evaluate(index, step, e) for e in exprs]
            if any(t is None for t in ts) or any(t.shape != ts[0].shape for t in ts):
                continue
            denom = float(ts[0].norm()) or 1.0
            err = float((ts[0] - sum(ts[1:])).norm()) / denom
            rec = index.get(step, exprs[0].terms[0])
            limit = tol if tol is not None else identity_tolerance(rec.dtype if rec else None)
            out.append(IdentityCheck(set_.engine, f"{total} == {' + '.join(terms)}", step, err, err <= limit))
    return out
