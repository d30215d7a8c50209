"""Writers that emulate other tools' dumps, following their documented layouts and code.

Neither vLLM feature was merged and SGLang is not installed here, so these reproduce
what the tools write (hook placement, file names, quirks included) on any nn.Module:

- ``VllmIntermediateLogger``: vLLM PR #21215 ``intermediates_logging.py``
- ``PassDumper``: vLLM PR #36576 ``tensor_dump.py`` / SGLang ``tensor_dump_forward_hook.py``
- ``SglangDumper``: SGLang ``debug_utils/dumper.py`` (``dump``, ``step``, non-intrusive mode)

Also tiny "engine style" models: a flat-token ``ToyForCausalLM`` whose top-level
``model`` takes ``(input_ids, positions)`` like vLLM's, or a ForwardBatch like SGLang's.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


# -- vLLM intermediate logging ----------------------------------------------------------

def _describe(x: Any) -> Any:
    """vLLM's convert_intermediates_to_json."""
    if isinstance(x, torch.Tensor):
        return {"type": "tensor", "shape": list(x.shape), "dtype": str(x.dtype), "numel": x.numel()}
    if isinstance(x, (list, tuple)):
        kind = "list" if isinstance(x, list) else "tuple"
        if len(x) > 20:
            return {"type": kind, "length": len(x), "sample": [_describe(i) for i in x[:100]],
                    "note": f"Showing only first 20 of {len(x)} items"}
        return {"type": kind, "items": [_describe(i) for i in x]}
    if isinstance(x, dict):
        return {"type": "dict", "items": {k: _describe(v) for k, v in x.items()}}
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return {"type": type(x).__name__, "string_repr": str(x)}


class VllmIntermediateLogger:
    """Hooks like vLLM's IntermediatesLogger; writes ``output_dir/<uuid>/step_N/...``."""

    def __init__(self, model: nn.Module, output_dir: str | Path, log_step_ids: list[int] | None = None,
                 max_tensor_size: int | None = None, log_post_fwd_inputs: bool = False) -> None:
        self.model = model
        self.run_dir = Path(output_dir) / str(uuid.uuid4())
        self.log_step_ids = log_step_ids if log_step_ids is not None else [0]
        self.max_tensor_size = max_tensor_size
        self.log_post_fwd_inputs = log_post_fwd_inputs
        self.step = 0
        self.calls: dict[str, int] = {}
        self.handles: list = []

    def __enter__(self) -> "VllmIntermediateLogger":
        self.run_dir.mkdir(parents=True)
        for name, module in self.model.named_modules():
            if name:
                self.handles.append(module.register_forward_pre_hook(self._pre(name)))
                self.handles.append(module.register_forward_hook(self._post(name)))
        self.handles.append(self.model.register_forward_hook(self._step_fwd))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _step_fwd(self, module, inputs, outputs) -> None:
        self.step += 1
        self.calls = {}

    def _log_dir(self, name: str, is_pre: bool) -> Path | None:
        if self.log_step_ids and self.step not in self.log_step_ids:
            return None
        if is_pre:
            self.calls[name] = self.calls[name] + 1 if name in self.calls else 0
        call = self.calls.get(name, 0)
        d = self.run_dir / f"step_{self.step}" / (name + (f"_{call}" if call > 0 else ""))
        d.mkdir(parents=True, exist_ok=True)
        if is_pre:
            with open(d.parent / "module_calls.txt", "a") as f:
                f.write(d.name + "\n")
        return d

    def _save(self, x: Any, base: str) -> None:
        if isinstance(x, torch.Tensor):
            if self.max_tensor_size is not None and x.numel() > self.max_tensor_size:
                Path(f"{base}.json").write_text(json.dumps({
                    "shape": list(x.shape), "dtype": str(x.dtype), "device": str(x.device),
                    "numel": x.numel(),
                    "skipped": f"Tensor size {x.numel()} exceeds max_tensor_size {self.max_tensor_size}"}))
                return
            torch.save(x, f"{base}_{str(x.device).replace(':', '_')}.pt")
        elif isinstance(x, (list, tuple)):
            for i, item in enumerate(x):
                self._save(item, f"{base}_{i}")
        elif isinstance(x, dict):
            for k, v in x.items():
                self._save(v, f"{base}_{k}")

    def _pre(self, name: str):
        def hook(module, inputs):
            d = self._log_dir(name, True)
            if d is not None:
                (d / "inputs.json").write_text(json.dumps(_describe(inputs), indent=2))
                self._save(inputs, str(d / "inputs"))
        return hook

    def _post(self, name: str):
        def hook(module, inputs, outputs):
            d = self._log_dir(name, False)
            if d is not None:
                (d / "outputs.json").write_text(json.dumps(_describe(outputs), indent=2))
                self._save(outputs, str(d / "outputs"))
                if self.log_post_fwd_inputs:
                    (d / "post_fwd_inputs.json").write_text(json.dumps(_describe(inputs), indent=2))
                    self._save(inputs, str(d / "post_fwd_inputs"))
        return hook


# -- per-pass dumps (vLLM debug tensor dump, SGLang tensor_dump_forward_hook) -------------

@dataclass
class ForwardBatch:
    """The fields of SGLang's ForwardBatch that its hook dumper records."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    seq_lens: torch.Tensor


class PassDumper:
    """Leaf-module output hooks writing ``DIR/TP{t}_PP{p}_Rank{r}_pid{pid}/PassNNNNN.pt``.

    ``flavor="vllm"`` records ``input[0]``/``input[1]`` of the top-level module as
    input_ids/positions; ``"sglang"`` records a ForwardBatch argument's fields.
    """

    def __init__(self, model: nn.Module, dump_dir: str | Path, flavor: str = "vllm", top: str = "model",
                 tp_size: int = 1, tp_rank: int = 0, pp_rank: int = 0, skip_passes: int = 0,
                 pid: int | None = None) -> None:
        self.model, self.flavor, self.top = model, flavor, top
        self.skip_passes = skip_passes
        self.pass_id = 0
        self.current: dict[str, Any] = {}
        rank = tp_size * pp_rank + tp_rank
        self.dir = Path(dump_dir) / f"TP{tp_rank}_PP{pp_rank}_Rank{rank}_pid{pid or os.getpid()}"
        self.handles: list = []

    def __enter__(self) -> "PassDumper":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._add(self.model, "")
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _add(self, module: nn.Module, prefix: str) -> None:
        for name, child in module._modules.items():
            cur = name if not prefix else f"{prefix}.{name}"
            is_top = not prefix and name == self.top
            self._add(child, cur)
            if len(child._modules) == 0 or is_top:
                self.handles.append(child.register_forward_hook(self._hook(cur, is_top)))

    def add_tensor(self, name: str, item: Any) -> None:
        if self.skip_passes > 0:
            return
        if isinstance(item, (tuple, list)):
            tensors = [t.cpu() for t in item if isinstance(t, torch.Tensor)]
            if len(tensors) == 1:
                self.current[name] = tensors[0]
            elif len(tensors) > 1:
                self.current[name] = tensors
        elif isinstance(item, torch.Tensor):
            self.current[name] = item.cpu()
        # other types: the tools log "Unsupported type" and drop the value

    def dump_current(self) -> None:
        if self.skip_passes > 0:
            self.skip_passes -= 1
            self.current = {}
            return
        if not self.current:
            return
        torch.save(self.current, str(self.dir / f"Pass{self.pass_id:05d}.pt"))
        self.current = {}
        self.pass_id += 1

    def _hook(self, name: str, is_top: bool):
        def hook(module, inputs, output):
            if is_top:
                if self.flavor == "vllm" and len(inputs) >= 2:
                    if isinstance(inputs[0], torch.Tensor):
                        self.add_tensor(name + ".forward_batch_info.input_ids", inputs[0])
                    if isinstance(inputs[1], torch.Tensor):
                        self.add_tensor(name + ".forward_batch_info.positions", inputs[1])
                if self.flavor == "sglang":
                    for item in inputs:
                        if isinstance(item, ForwardBatch):
                            self.add_tensor(name + ".forward_batch_info.input_ids", item.input_ids)
                            self.add_tensor(name + ".forward_batch_info.seq_lens", item.seq_lens)
                            self.add_tensor(name + ".forward_batch_info.positions", item.positions)
                self.dump_current()
            if output is not None:
                self.add_tensor(name, output)
        return hook


# -- SGLang dumper.py --------------------------------------------------------------------

class SglangDumper:
    """``dumper.dump(name, value, **tags)`` / ``dumper.step()`` and the non-intrusive hooks."""

    CORE = frozenset({"input_ids", "positions", "seq_lens", "req_pool_indices", "rids"})

    def __init__(self, base_dir: str | Path, exp_name: str = "dump_20260101_000000_000001",
                 rank: int = 0) -> None:
        self.dir = Path(base_dir) / exp_name
        self.rank = rank
        self.step_ = 0
        self.dump_index = 0
        self.ctx: dict[str, Any] = {}
        self.handles: list = []

    def step(self) -> None:
        self.step_ += 1

    def set_ctx(self, **kw: Any) -> None:
        self.ctx = {k: v for k, v in (self.ctx | kw).items() if v is not None}

    def dump(self, name: str, value: Any, dims: str | None = None, **tags: Any) -> None:
        self.dump_index += 1
        full = dict(step=self.step_, rank=self.rank, dump_index=self.dump_index,
                    name=name, recompute_status="disabled", **tags, **self.ctx)
        meta = dict(full, world_rank=self.rank, world_size=1)
        if dims is not None:
            meta["dims"] = dims
        if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > value.nbytes:
            value = value.clone()  # _torch_save: do not write a view's whole storage
        self.dir.mkdir(parents=True, exist_ok=True)
        fname = "___".join(f"{k}={v}" for k, v in full.items()) + ".pt"
        torch.save({"value": value, "meta": meta}, str(self.dir / fname))

    # non-intrusive mode "all": pre/post hooks on every module
    def register_non_intrusive(self, model: nn.Module) -> None:
        for mname, module in model.named_modules():
            if mname.split(".")[-2:-1] == ["layers"] and mname.split(".")[-1].isdigit():
                lid = int(mname.split(".")[-1])
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, a, _l=lid: self.set_ctx(layer_id=_l)))
                self.handles.append(module.register_forward_hook(
                    lambda m, a, o: self.set_ctx(layer_id=None)))
            self.handles.append(module.register_forward_pre_hook(self._pre(mname), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(mname)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @staticmethod
    def _convert(value: Any) -> dict[str, Any]:
        if isinstance(value, torch.Tensor):
            return {"": value}
        if isinstance(value, (tuple, list)):
            tensors = [t for t in value if isinstance(t, torch.Tensor)]
            if len(tensors) == 1:
                return {"": tensors[0]}
            return {str(i): t for i, t in enumerate(tensors)}
        return {}

    def _dump_value(self, module_name: str, value: Any, sub_name: str) -> None:
        for key, item in self._convert(value).items():
            effective = key or sub_name.rsplit(".", 1)[-1]
            if effective in self.CORE:
                self.dump(effective, item)
            else:
                parts = [p for p in (module_name, sub_name, key) if p]
                self.dump("non_intrusive__" + ".".join(parts), item)

    def _pre(self, mname: str):
        def hook(module, args, kwargs):
            for i, item in enumerate(args):
                self._dump_value(mname, item, f"inputs.{i}")
            for k, v in kwargs.items():
                self._dump_value(mname, v, f"inputs.{k}")
        return hook

    def _post(self, mname: str):
        def hook(module, inputs, output):
            if output is not None:
                self._dump_value(mname, output, "output")
        return hook


# -- a flat-token model shaped like vLLM's / SGLang's -------------------------------------

class ToyLayer(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(h)
        self.up = nn.Linear(h, 2 * h)
        self.act = nn.GELU()
        self.down = nn.Linear(2 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.norm(x))))


class ToyModel(nn.Module):
    """Takes flat ``input_ids``/``positions`` (all requests' tokens concatenated), like vLLM."""

    def __init__(self, vocab: int = 64, h: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, h)
        self.pos = nn.Embedding(128, h)
        self.layers = nn.ModuleList(ToyLayer(h) for _ in range(layers))
        self.norm = nn.LayerNorm(h)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: Any = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids) + self.pos(positions)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class ToyForCausalLM(nn.Module):
    def __init__(self, vocab: int = 64, h: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.model = ToyModel(vocab, h, layers)
        self.lm_head = nn.Linear(h, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: Any = None) -> torch.Tensor:
        if forward_batch is not None:
            return self.lm_head(self.model(input_ids, positions, forward_batch))
        return self.lm_head(self.model(input_ids, positions))


def toy_engine_steps(model: ToyForCausalLM, prompts: list[list[int]], new_tokens: int,
                     sglang: bool = False) -> list[dict[str, torch.Tensor]]:
    """Greedy decoding of several requests, engine style: step 0 prefills every prompt
    (tokens concatenated), later steps decode one token per request. Returns each step's
    flat ``input_ids``/``positions``/``seq_lens`` as the engine fed them."""
    seqs = [list(p) for p in prompts]
    fed: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for step in range(new_tokens):
            if step == 0:
                ids = [t for s in seqs for t in s]
                pos = [i for s in seqs for i in range(len(s))]
            else:
                ids = [s[-1] for s in seqs]
                pos = [len(s) - 1 for s in seqs]
            batch = {"input_ids": torch.tensor(ids), "positions": torch.tensor(pos),
                     "seq_lens": torch.tensor([len(s) for s in seqs])}
            fb = ForwardBatch(**batch) if sglang else None
            logits = model(batch["input_ids"], batch["positions"], fb)
            # The last row of each request gives its next token.
            lens = [len(s) for s in seqs] if step == 0 else [1] * len(seqs)
            ends = torch.tensor(lens).cumsum(0) - 1
            for s, tok in zip(seqs, logits[ends].argmax(-1).tolist()):
                s.append(tok)
            fed.append(batch)
    return fed
