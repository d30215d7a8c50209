"""Compile-safe capture: module hooks that still record inside vLLM's torch.compile graph.

Ordinary tensortap hooks copy tensors in Python. Under vLLM's compile mode Dynamo traces
the model once with ``fullgraph=True``; a hook that does Python work either breaks the
graph (an error under fullgraph) or runs only at trace time, on fake tensors.

A *tap* is a hook whose whole body is traceable: it flattens the module's inputs or
outputs to a list of tensors and calls one custom op, ``tensortap::tap(tensors, key)``.
Dynamo inlines the hook (hooks registered on a submodule's instance are part of
``nn.Module.__call__``, which Dynamo traces) and records the op as a graph node; the op
is declared side-effecting so AOTAutograd and Inductor keep it, and Inductor emits it as
a call back into Python. At run time the op hands the real tensors to the active
:class:`TapSession`, which numbers the call and copies them exactly as a normal hook
would. Outside compiled code (eager rungs, modules that run eagerly) the same op simply
runs eagerly, so every rung records through the same path.

The key is ``module|role|path,path,...``: constant strings baked into the graph, with no
process-specific ids, so a graph loaded from vLLM's compile cache in a later process
still routes its taps correctly. The ladder keys capturing engines apart from clean ones
in that cache (child.py), so tap-instrumented graphs never serve a normal vLLM run.

Importing this module registers the op (only the ladder's child process imports it).
"""

from typing import Any, Callable, List, Optional

import torch
import torch.nn as nn

from tensortap.capture.session import CaptureSession
from tensortap.errors import TensortapError
from tensortap.integrations.vllm import compat
from tensortap.integrations.vllm.worker import WorkerCapture

OP_NAME = "tensortap::tap"
_MAX_DEPTH = 8

# The session the op feeds. One engine per ladder child process, so one target.
_TARGET: Optional["TapSession"] = None


# `typing.List` rather than `list[...]`: custom_op infers the schema from real annotations.
@torch.library.custom_op(OP_NAME, mutates_args=())
def tap(tensors: List[torch.Tensor], key: str) -> None:
    """Hand ``tensors`` (one module call's inputs or outputs) to the active session."""
    target = _TARGET
    if target is not None:
        target.on_tap(key, tensors)


@tap.register_fake
def _tap_fake(tensors: List[torch.Tensor], key: str) -> None:
    return None


# Without this, dead-code elimination (AOTAutograd, Inductor) drops an op with no outputs.
torch.fx.node.has_side_effect(torch.ops.tensortap.tap.default)


# -- traceable hooks ---------------------------------------------------------------------
# Everything below the hook functions runs inside Dynamo's trace, so it stays plain:
# isinstance checks, loops over tuples/lists/dicts, string joins of constants.
def _join(prefix: str, key: str) -> str:
    return prefix + "." + key if prefix else key


def _collect(obj: Any, prefix: str, paths: list, tensors: list, depth: int) -> None:
    """Tensor leaves of ``obj`` with tensortap's path convention (capture/flatten.py)."""
    if isinstance(obj, torch.Tensor):
        paths.append(prefix)
        tensors.append(obj)
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            _collect(value, _join(prefix, str(i)), paths, tensors, depth + 1)
    elif isinstance(obj, dict):
        for k, value in obj.items():
            # Plain identifier keys only: the path must not need flatten's escaping.
            if isinstance(k, str) and "." not in k and "\\" not in k and "|" not in k and "," not in k:
                _collect(value, _join(prefix, k), paths, tensors, depth + 1)


def make_key(module: str, role: str, paths: list) -> str:
    return module + "|" + role + "|" + ",".join(paths)


def parse_key(key: str) -> tuple[str, str, list[str]]:
    module, role, paths = key.split("|", 2)
    return module, role, paths.split(",")


def _pre_tap(name: str) -> Callable:
    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        paths: list = []
        tensors: list = []
        for i, a in enumerate(args):
            _collect(a, str(i), paths, tensors, 1)
        for k, v in kwargs.items():
            _collect(v, k, paths, tensors, 1)
        if tensors:
            torch.ops.tensortap.tap(tensors, make_key(name, "input", paths))

    return pre


def _post_tap(name: str) -> Callable:
    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        paths: list = []
        tensors: list = []
        _collect(output, "", paths, tensors, 0)
        if tensors:
            torch.ops.tensortap.tap(tensors, make_key(name, "output", paths))

    return post


class TapSession(CaptureSession):
    """A CaptureSession whose module hooks are taps (see the module docstring).

    The step counter stays an ordinary pre-hook on the root model: the vLLM model runner
    calls the root (``LlamaForCausalLM``) eagerly; only the decorated backbone inside it
    is compiled. Call indices are counted when the op runs, per module and role.
    """

    def _install_hooks(self) -> None:
        global _TARGET
        if _TARGET is not None and _TARGET is not self:
            raise TensortapError("another tensortap tap session is already active in this process")
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre))
        self._planned_calls = {p.name: p.calls for p in self.planned}
        self._parsed: dict[str, tuple[str, str, list[str]]] = {}
        for p in self.planned:
            if self._want_inputs:
                self._handles.append(p.module.register_forward_pre_hook(_pre_tap(p.name), with_kwargs=True))
            if self._want_outputs:
                self._handles.append(p.module.register_forward_hook(_post_tap(p.name), with_kwargs=True))
        _TARGET = self

    def stop(self) -> None:
        global _TARGET
        if _TARGET is self:
            _TARGET = None
        super().stop()

    def on_tap(self, key: str, tensors: List[torch.Tensor]) -> None:
        """Called by the op with real tensors, in execution order; never raises."""
        try:
            parsed = self._parsed.get(key)
            if parsed is None:
                parsed = self._parsed[key] = parse_key(key)
            name, role, paths = parsed
            if name not in self._planned_calls:
                return  # a graph from vLLM's compile cache built for another plan
            # Per-step counters live in CaptureSession._calls, which _root_pre clears.
            counter = role + ":" + name
            call = self._calls.get(counter, 0)
            self._calls[counter] = call + 1
            if role == "output" or not self._want_outputs:
                self.fired[name] = self.fired.get(name, 0) + 1
            calls = self._planned_calls[name]
            if self.active and self._step_wanted and (calls is None or call in calls):
                items = list(zip(paths, tensors))
                self._guarded(name, lambda: self._emit_all(name, call, role, items))
        except Exception as e:  # noqa: BLE001 - never break the engine
            self.fail(f"tap {key!r} failed: {type(e).__name__}: {e}")


class TapWorkerCapture(WorkerCapture):
    """WorkerCapture (steps, token tables, run.json) with taps instead of plain hooks.

    Compiled ``@support_torch_compile`` modules are left alone: their own hooks cannot
    fire, but the taps on every module their forward calls are traced into the graph.
    """

    session_class = TapSession
    skip_compiled_modules = True


def attach_taps(worker: Any, config: Any, engine_extra: dict[str, Any] | None = None) -> TapWorkerCapture:
    """Start a tap capture on a worker whose model is loaded but not yet compiled.

    Must run before vLLM's first forward (profile run / warm-up), which is when Dynamo
    traces the model: taps installed later are not in the graph and never fire.
    """
    worker = compat.unwrap_worker(worker)
    problems = compat.runner_problems(worker) + compat.layout_problems(worker)
    if problems:
        raise TensortapError("cannot capture this engine: " + "; ".join(problems))
    cap = TapWorkerCapture(worker, config, "ladder", prompt_base=0, engine_extra=engine_extra)
    cap.start()
    return cap
