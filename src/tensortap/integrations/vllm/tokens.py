"""Token tables for vLLM steps: which request and position every row of the flat batch is.

vLLM runs one forward over all scheduled tokens of all running requests, concatenated
into ``[num_tokens, ...]`` tensors (prefill chunks and decode tokens mixed). Comparing
such a tensor with another engine's is only possible row by row through
``(request, position)``; this module writes that mapping for each step.
"""

from __future__ import annotations

from typing import Any

import torch

from tensortap.integrations.vllm import compat


class RequestIndexer:
    """Gives each vLLM request id a small integer, stable for the whole capture.

    With ``prompt_base`` (offline ``LLM.generate``), the integer is the prompt's index
    counted from the first request of the capture, read from the id vLLM's ``LLM``
    assigns. Otherwise (served requests, whose ids are opaque) it is the order in which
    this rank first saw the request; TP ranks see the same batches, so they agree.
    """

    def __init__(self, prompt_base: int | None = None) -> None:
        self.prompt_base = prompt_base
        self._seen: dict[str, int] = {}

    @property
    def order(self) -> str:
        return "prompt" if self.prompt_base is not None else "first_seen"

    def index(self, request_id: str) -> int:
        known = self._seen.get(request_id)
        if known is not None:
            return known
        idx = None
        if self.prompt_base is not None:
            number = compat.offline_prompt_number(request_id)
            if number is not None and number >= self.prompt_base:
                idx = number - self.prompt_base
        if idx is None:
            idx = len(self._seen)
        self._seen[request_id] = idx
        return idx


def _as_list(t: torch.Tensor | None, rows: int) -> list[int] | None:
    if not isinstance(t, torch.Tensor):
        return None
    if t.dim() == 2:  # M-RoPE positions are [3, tokens]; the first row is the text position
        t = t[0]
    return t.reshape(-1)[:rows].detach().cpu().tolist()


def build_table(runner: Any, scheduler_output: Any, forward_kwargs: dict[str, Any],
                indexer: RequestIndexer) -> dict[str, Any]:
    """The token table of the forward about to run, from the model runner's batch.

    ``forward_kwargs`` are the root model's keyword arguments (``input_ids``,
    ``positions``): the rows and positions the model really receives. Rows past the
    scheduled tokens (padding up to a captured batch size) get request -1.
    """
    reqs = compat.scheduled_requests(runner, scheduler_output)
    scheduled = sum(n for _, n in reqs)
    positions = forward_kwargs.get("positions")
    input_ids = forward_kwargs.get("input_ids")
    if isinstance(positions, torch.Tensor):
        rows = int(positions.shape[-1])
    elif isinstance(input_ids, torch.Tensor):
        rows = int(input_ids.shape[0])
    else:
        rows = scheduled
    if scheduled > rows:
        raise ValueError(f"the runner scheduled {scheduled} tokens but the model received {rows} rows")
    request: list[int] = []
    request_ids: list[str | None] = []
    logits_rows: list[int] = []
    for rid, n in reqs:
        request += [indexer.index(rid)] * n
        request_ids += [rid] * n
        logits_rows.append(len(request) - 1)
    pad = rows - scheduled
    request += [-1] * pad
    request_ids += [None] * pad
    position = _as_list(positions, rows)
    if position is None:
        position = [-1] * rows
    position[scheduled:] = [-1] * pad
    table: dict[str, Any] = {
        "layout": "flat",
        "batch_shape": [rows],
        "request": request,
        "position": position,
        "token_ids": _as_list(input_ids, rows),
        "request_ids": request_ids,
        "request_order": indexer.order,
    }
    if not compat.uses_spec_decode(runner):
        # Rows whose hidden states the runner passes to compute_logits (the last scheduled
        # token of each request): row i of a logits_processor tensor is flat row logits_rows[i].
        table["logits_rows"] = logits_rows
    return table
