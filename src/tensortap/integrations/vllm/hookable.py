"""Make hooks fire on ``@support_torch_compile`` modules, one instance at a time.

vLLM's decorator assigns ``cls.__call__`` (vllm/compilation/decorators.py). Python looks
special methods up on the type, so ``model(...)`` runs that function, which calls
``self.forward`` directly: ``nn.Module.__call__`` and with it every forward hook on the
instance is skipped, even in eager mode. (vLLM PR #36576 fixed this by deleting
``__call__`` from every such class, globally and irreversibly.)

Here each affected *instance* gets a private subclass whose ``__call__`` is
``nn.Module.__call__`` again; its class is put back when capture ends. Other engines,
models and instances in the process are untouched. This is only done when compilation
is off for the instance (``do_not_compile``), where the decorated ``__call__`` would
have run ``self.forward`` anyway, so the model computes exactly the same thing.
"""

from __future__ import annotations

import torch.nn as nn

from tensortap.integrations.vllm import compat

_SUBCLASSES: dict[type, type] = {}


class CompiledModuleError(RuntimeError):
    """A compile-decorated module really is compiled: hooks cannot fire inside it."""


def _hookable_class(cls: type) -> type:
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        # Same names, so logs, reprs and run.json's model class read as before.
        sub = type(cls.__name__, (cls,), {
            "__call__": nn.Module.__call__,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_tensortap_original_class": cls,
        })
        _SUBCLASSES[cls] = sub
    return sub


def make_hooks_fire(model: nn.Module, skip_compiled: bool = False) -> list[tuple[nn.Module, type]]:
    """Give every compile-decorated module in ``model`` back ``nn.Module.__call__``.

    Returns ``(module, original_class)`` pairs for :func:`restore`. Raises
    :class:`CompiledModuleError` (changing nothing) if one of them is really compiled,
    unless ``skip_compiled``: then such a module is left as it is (its own hooks cannot
    fire, but Dynamo traces the hooks of the modules its forward calls; the vLLM compile
    ladder's compile-safe taps rely on that).
    """
    targets = []
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__call__ is nn.Module.__call__ or not compat.is_compile_decorated(module):
            continue
        if getattr(cls, "_tensortap_original_class", None) is not None:
            continue  # already hookable (a second capture on the same model)
        if not compat.decorated_call_is_plain_forward(module):
            if skip_compiled:
                continue
            raise CompiledModuleError(
                f"module {name or '<root>'!r} ({cls.__qualname__}) runs under torch.compile")
        targets.append((module, cls))
    for module, cls in targets:
        module.__class__ = _hookable_class(cls)
    return targets


def restore(swapped: list[tuple[nn.Module, type]]) -> None:
    """Undo :func:`make_hooks_fire`."""
    for module, cls in swapped:
        if type(module) is _SUBCLASSES.get(cls):
            module.__class__ = cls
