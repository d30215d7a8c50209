"""Finding the cause: replay modules on reference inputs, bisect compiler stages.

This layer produces runs (replayed outputs, per-backend captures); the compare layer
above turns them into local/propagated errors and verdicts.

The package is also callable, as ``tt.localize(model_b, ref)``: the design names both
this folder and that function ``localize``, and importing a submodule sets
``tensortap.localize`` to this package, so the package forwards calls to
tensortap.compare.localize.localize.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from tensortap.compare.localize import localize

        return localize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
