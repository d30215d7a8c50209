"""Token tables rebuilt from what dumps record (input_ids, positions, seq_lens, request ids).

Same shape as the tables tensortap's own adapters write (docs/format.md): rows are the
leading ``batch_shape`` dimensions of a tensor, ``request`` and ``position`` per row.
"""

from __future__ import annotations

from typing import Any

import torch


def token_table(
    input_ids: torch.Tensor,
    positions: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    request_ids: list[str] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """A token table for one step, and a note saying what had to be inferred (or why none).

    ``[B, T]`` ids (transformers): request = batch row, padding (mask 0) = -1, positions
    from ``positions`` or ``0..T-1``. ``[N]`` ids (engines, tokens of all requests
    concatenated): positions are required; requests are split exactly with ``seq_lens``
    (a request ends at position ``seq_len - 1``), else where positions stop counting up.
    """
    ids = input_ids.detach().cpu()
    if ids.dim() == 2:
        table = _batch(ids, positions, attention_mask)
        if request_ids is not None:
            table["request_ids"] = list(request_ids)
        return table, None
    if ids.dim() != 1:
        return None, f"input_ids of shape {list(ids.shape)} (expected [tokens] or [batch, tokens])"
    n = ids.numel()
    if positions is None or positions.numel() != n:
        return None, "no positions of the same length as input_ids"
    pos = [int(p) for p in positions.detach().reshape(-1).tolist()]
    note = None
    req = _split_by_seq_lens(pos, seq_lens) if seq_lens is not None else None
    if req is None:
        req = _split_by_positions(pos)
        note = "requests inferred from positions (a new request where positions stop counting up)"
    table: dict[str, Any] = {"layout": "flat", "batch_shape": [n], "request": req,
                             "position": pos, "token_ids": [int(x) for x in ids.tolist()]}
    if request_ids is not None:
        table["request_ids"] = list(request_ids)
    return table, note


def _batch(ids: torch.Tensor, positions: torch.Tensor | None, mask: torch.Tensor | None) -> dict[str, Any]:
    b, t = ids.shape
    if isinstance(positions, torch.Tensor) and positions.numel() in (t, b * t):
        pos = positions.detach().cpu().reshape(-1, t).expand(b, t).clone()
    else:
        pos = torch.arange(t).expand(b, t).clone()
    req = torch.arange(b).unsqueeze(1).expand(b, t).clone()
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == b and mask.shape[1] >= t:
        valid = mask[:, -t:].detach().cpu().bool()
        req[~valid] = -1
        pos[~valid] = -1
    return {"layout": "batch", "batch_shape": [b, t], "request": req.reshape(-1).tolist(),
            "position": pos.reshape(-1).tolist(), "token_ids": ids.reshape(-1).tolist()}


def _split_by_seq_lens(pos: list[int], seq_lens: torch.Tensor) -> list[int] | None:
    lens = [int(x) for x in seq_lens.detach().reshape(-1).tolist()]
    req, r = [], 0
    for p in pos:
        if r >= len(lens):
            return None  # more tokens than requests account for: fall back
        req.append(r)
        if p == lens[r] - 1:
            r += 1
    return req if r == len(lens) else None


def _split_by_positions(pos: list[int]) -> list[int]:
    req, r = [], -1
    for i, p in enumerate(pos):
        if i == 0 or p != pos[i - 1] + 1:
            r += 1
        req.append(r)
    return req
