"""Lazy package attributes: a package names what it exports; modules load on first use.

Keeps ``import tensortap.integrations.vllm`` (done by vLLM in every process through the
plugin entry point) from importing the capture machinery until it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``name`` from module ``table[name]``."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
