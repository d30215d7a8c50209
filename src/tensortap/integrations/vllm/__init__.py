"""vLLM adapter: capture inside a real vLLM engine, offline or served, without editing vLLM.

- :func:`capture` — a context manager around an existing ``vllm.LLM`` (hooks are placed
  in every worker through ``LLM.collective_rpc``);
- :func:`capture_generate` — load a model folder in vLLM, generate greedily under capture;
- the plugin (``tensortap.integrations.vllm.plugin``, entry point ``vllm.general_plugins``)
  — set ``TENSORTAP_DIR`` (or ``TENSORTAP_CONFIG``) and run ``vllm serve`` or any vLLM program.

See docs/vllm.md. Importing this package imports neither vLLM nor the capture machinery
(vLLM imports the plugin module in every one of its processes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tensortap.lazy import lazy_getattr

if TYPE_CHECKING:
    from tensortap.integrations.vllm.llm import VllmCapture, capture
    from tensortap.integrations.vllm.offline import capture_generate

__all__ = ["capture", "capture_generate", "VllmCapture"]

_LAZY = {
    "capture": "tensortap.integrations.vllm.llm",
    "VllmCapture": "tensortap.integrations.vllm.llm",
    "capture_generate": "tensortap.integrations.vllm.offline",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
