"""tensortap: capture intermediate tensors of PyTorch models and engines, find where runs diverge.

Importing tensortap registers no hook and imports no engine.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tensortap.api import capture, open  # noqa: E402,A004
from tensortap import localize  # noqa: E402  (a callable package: tt.localize(model_b, ref))

__all__ = ["capture", "open", "diff", "localize", "bisect_compile", "__version__"]

_LAZY = {
    "diff": ("tensortap.compare.api", "diff"),
    "bisect_compile": ("tensortap.compare.bisect", "bisect_compile"),
}


def __getattr__(name: str):
    # Heavier layers load on first use so `import tensortap` stays cheap.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name == "vllm":
        import importlib

        return importlib.import_module("tensortap.integrations.vllm")
    raise AttributeError(f"module 'tensortap' has no attribute {name!r}")
