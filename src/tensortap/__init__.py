"""tensortap: capture intermediate tensors of PyTorch models and engines, find where runs diverge.

Importing tensortap registers no hook, imports no engine and loads nothing heavy: the
names below load their layer on first use (vLLM imports the plugin, a submodule, in
every one of its processes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tensortap.version import __version__

if TYPE_CHECKING:
    from tensortap.api import capture, open  # noqa: A004
    from tensortap.compare.api import diff
    from tensortap.localize.bisect import bisect_compile

__all__ = ["capture", "open", "diff", "localize", "bisect_compile", "__version__"]

_LAZY = {
    "capture": ("tensortap.api", "capture"),
    "open": ("tensortap.api", "open"),
    "diff": ("tensortap.compare.api", "diff"),
    "bisect_compile": ("tensortap.localize.bisect", "bisect_compile"),
}
_SUBPACKAGES = {
    # A callable package: tt.localize(model_b, ref) (tensortap/localize/__init__.py).
    "localize": "tensortap.localize",
    "vllm": "tensortap.integrations.vllm",
}


# ``tt.capture`` is the function, while ``tensortap.capture`` is also a (namespace)
# package: importing a package binds it on its parent the first time, which would
# shadow the function for good. Import the package now (it is empty, so cheap) and drop
# that binding, so the name always reaches __getattr__ below.
importlib.import_module("tensortap.capture")
globals().pop("capture", None)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(_SUBPACKAGES[name])
    raise AttributeError(f"module 'tensortap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
