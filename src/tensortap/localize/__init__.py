"""Finding the cause: replay modules on reference inputs (local vs propagated error), bisect
compiler stages, and judge both with the compare layer's diff.

- ``replay``/``root_replay``/``rebuild``: produce runs (replayed outputs, end-to-end runs
  on the reference's root inputs); ``api``: ``localize``, which diffs them into a culprit;
- ``compile_stages``: per-backend captures; ``bisect``: ``bisect_compile``.

The package is also callable, as ``tt.localize(model_b, ref)``: the design names both
this folder and that function ``localize``, and importing a submodule sets
``tensortap.localize`` to this package, so the package forwards calls to
tensortap.localize.api.localize.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from tensortap.localize.api import localize

        return localize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
