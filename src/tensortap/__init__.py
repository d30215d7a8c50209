"""tensortap: capture intermediate tensors of PyTorch models and engines, find where runs diverge.

Importing tensortap registers no hook and imports no engine.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tensortap.api import capture, open  # noqa: E402,A004

__all__ = ["capture", "open", "diff", "__version__"]


def __getattr__(name: str):
    # Heavier layers load on first use so `import tensortap` stays cheap.
    if name == "diff":
        from tensortap.compare.api import diff

        return diff
    if name == "vllm":
        import importlib

        return importlib.import_module("tensortap.integrations.vllm")
    raise AttributeError(f"module 'tensortap' has no attribute {name!r}")
