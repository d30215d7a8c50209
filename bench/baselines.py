"""The approaches tensortap replaces, reimplemented (or called) for the benchmark.

- ``VllmStyleLogger``: vLLM's intermediate logging (PR #21215, never merged;
  ``vllm/v1/intermediates/intermediates_logging.py``): a pre- and a post-hook on every
  named module that, inside the hook, creates ``step_N/<module>[_k]/`` folders, appends
  to ``module_calls.txt`` and ``torch.save``s each tensor synchronously to
  ``inputs_<i>_<device>.pt`` / ``outputs_<device>.pt``. One deliberate change: hooks are
  registered ``with_kwargs=True`` and keyword arguments are saved as ``inputs_<name>``.
  transformers passes most tensors by keyword; vLLM's models pass them positionally, so
  this keeps "all inputs" the same bytes as tensortap records.
- ``hf_debugger``: the real ``transformers.model_addition_debugger_context`` with
  ``use_repr=False`` (full tensors to one safetensors file each) and no layer pruning.
- ``compare_il_style``: vLLM's ``tools/compare_il.py`` approach: pair ``.pt`` files by
  identical relative path, ``torch.load`` each pair, compute metrics on the pair.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn


def _save_tensors(value: Any, base: str) -> None:
    """vLLM IL's ``save_tensors``: recurse into lists/tuples/dicts, torch.save each tensor."""
    if isinstance(value, torch.Tensor):
        torch.save(value, f"{base}_{str(value.device).replace(':', '_')}.pt")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _save_tensors(item, f"{base}_{i}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _save_tensors(v, f"{base}_{k}")


class VllmStyleLogger:
    """Synchronous per-module ``torch.save`` logging, as in vLLM's intermediate logging."""

    def __init__(self, model: nn.Module, out: str | Path) -> None:
        self.model = model
        self.out = Path(out)
        self.step = 0
        self.calls: dict[str, int] = {}
        self.handles: list[Any] = []

    def _module_dir(self, name: str, pre: bool) -> Path:
        step_dir = self.out / f"step_{self.step}"
        step_dir.mkdir(exist_ok=True, parents=True)
        idx = self.calls.get(name, 0)
        label = name + (f"_{idx}" if idx > 0 else "")
        if pre:
            with open(step_dir / "module_calls.txt", "a") as f:
                f.write(label + "\n")
        d = step_dir / label
        d.mkdir(exist_ok=True, parents=True)
        return d

    def _pre(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            # vLLM bumps the call counter in the pre-hook, before preparing the folder.
            self.calls[name] = self.calls[name] + 1 if name in self.calls else 0
            d = self._module_dir(name, pre=True)
            _save_tensors(args, str(d / "inputs"))
            for k, v in kwargs.items():
                _save_tensors(v, str(d / f"inputs_{k}"))
        return hook

    def _post(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            d = self._module_dir(name, pre=False)
            _save_tensors(output, str(d / "outputs"))
        return hook

    def _step(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.step += 1
        self.calls = {}

    def __enter__(self) -> "VllmStyleLogger":
        self.out.mkdir(parents=True, exist_ok=True)
        for name, module in self.model.named_modules():
            if name:
                self.handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._step))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@contextlib.contextmanager
def hf_debugger(model: nn.Module, out: str | Path) -> Iterator[nn.Module]:
    """transformers' own debugger, saving full tensors (safetensors) rather than reprs."""
    from transformers import model_addition_debugger_context

    with model_addition_debugger_context(model, debug_path=str(out), do_prune_layers=False,
                                         use_repr=False) as m:
        yield m


def dir_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def compare_il_style(dir1: Path, dir2: Path, metrics: Callable[[str, torch.Tensor, torch.Tensor], Any]
                     ) -> dict[str, Any]:
    """Pair ``.pt`` files by relative path, ``torch.load`` both, compute ``metrics(path, a, b)``."""
    rows: dict[str, dict] = {}
    for p1 in sorted(dir1.rglob("*.pt")):
        rel = p1.relative_to(dir1)
        p2 = dir2 / rel
        if not p2.exists():
            rows[str(rel)] = {"error": "missing"}
            continue
        a = torch.load(p1, map_location="cpu", weights_only=True)
        b = torch.load(p2, map_location="cpu", weights_only=True)
        if a.shape != b.shape or a.dtype != b.dtype:
            rows[str(rel)] = {"error": "shape or dtype mismatch"}
            continue
        rows[str(rel)] = metrics(rel.as_posix(), a, b)
    return rows
