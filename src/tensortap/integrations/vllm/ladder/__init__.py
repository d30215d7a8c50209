"""The vLLM compile ladder: which piece of vLLM's torch.compile integration changes the numbers.

Runs the same prompts through a ladder of engine configurations (``eager``,
``compile-no-inductor``, ``compile``, ``compile-no-cache``; on GPUs also ``cudagraph-only``
and ``compile+cudagraph``), each in a fresh process, and compares every rung with the
eager one: generated tokens, chosen-token logprobs, and intermediate anchors recorded by
compile-safe taps. Names the smallest set of switches that changes the result.

Modules: rungs (definitions), taps (capture inside compiled graphs), child (one rung's
process), runner (spawning it), compare (the three levels), explain (smallest switch set),
result, report (table, HTML), api (:func:`run_ladder`). See docs/vllm-ladder.md.

Importing this package imports no vLLM (each rung's child process does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tensortap.lazy import lazy_getattr

if TYPE_CHECKING:
    from tensortap.integrations.vllm.ladder.api import run_ladder
    from tensortap.integrations.vllm.ladder.result import LadderResult, RungOutcome
    from tensortap.integrations.vllm.ladder.rungs import RUNGS

__all__ = ["run_ladder", "LadderResult", "RungOutcome", "RUNGS"]

_LAZY = {
    "run_ladder": "tensortap.integrations.vllm.ladder.api",
    "LadderResult": "tensortap.integrations.vllm.ladder.result",
    "RungOutcome": "tensortap.integrations.vllm.ladder.result",
    "RUNGS": "tensortap.integrations.vllm.ladder.rungs",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
