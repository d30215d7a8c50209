"""transformers' ``model_addition_debugger_context``: a call tree in JSON plus safetensors files.

Layout (``debug_path``)::

    <Class>_debug_tree_SUMMARY.json        call tree: module_path, inputs {args, kwargs},
    <Class>_debug_tree_FULL_TENSORS.json   outputs (leaf modules only), children; FULL adds
                                           "value": "./<file>.safetensors" (use_repr=False)
                                           or the printed tensor as lines (use_repr=True)
    <Class>.model.layers.0.mlp.down_proj_inputs_args_0.safetensors     key "data"
    <Class>.model.layers.0.mlp.down_proj_outputs.safetensors
    <Class>_outputs_logits.safetensors     the root's outputs (written, then pruned from the JSON)

Mapping: one forward = step 0 (the debugger overwrites everything on the next one);
``<Class>.a.b`` -> module ``a.b``, ``<Class>`` -> ``""``; a module path seen again in
the tree -> call 1, 2 …; ``inputs.args[i]`` -> path ``i``, ``inputs.kwargs[k]`` -> ``k``,
nested items ``.j``/``.key``; a lone output -> ``""``, tuple item -> ``i``. Records are
ordered as the debugger ran: inputs before children, outputs after them.

Kept honest: printed (``use_repr=True``) tensors become records without data; a file
written by several calls (the debugger names files by module path only) keeps its data
on the last call only; tensor files the JSON does not mention (the root's outputs, layers
pruned by ``do_prune_layers``) are mapped from their file names and flagged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from tensortap.errors import RunFormatError, TensortapError, one_line
from tensortap.store.importers.base import Found, ImportedRun, Source, escape_key, listdir, natural_key
from tensortap.store.importers.tokens import token_table

TREE = re.compile(r"^(?P<cls>.+)_debug_tree_(?P<kind>FULL_TENSORS|SUMMARY)\.json$")
_SHAPE = re.compile(r"^torch\.Size\(\[(?P<dims>[\d,\s]*)\]\)$")
_FILE = re.compile(r"^(?P<mp>.+?)_(?P<role>inputs|outputs)(?:_(?P<rest>.+))?\.safetensors$")
_MAX_JSON = 1 << 30


def tree_files(path: Path) -> dict[str, Path]:
    """Class name -> its tree JSON (FULL_TENSORS preferred) at ``path`` (a folder or one JSON)."""
    if path.is_file():
        m = TREE.match(path.name)
        return {m.group("cls"): path} if m else {}
    if not path.is_dir():
        return {}
    out: dict[str, Path] = {}
    for e in listdir(path):
        m = TREE.match(e.name)
        if m and e.is_file() and (m.group("cls") not in out or m.group("kind") == "FULL_TENSORS"):
            out[m.group("cls")] = Path(e.path)
    return out


class HfDebuggerRun(ImportedRun):
    """The output folder of ``model_addition_debugger_context`` (or one of its tree JSON files)."""

    format_name = "hf-debugger"
    tool_name = "transformers-model-debugger"
    family = "hf"

    def _check_layout(self) -> None:
        trees = tree_files(self.path)
        if not trees:
            raise RunFormatError(f"{self.path}: not a transformers debugger folder "
                                 f"(no <Class>_debug_tree_SUMMARY.json / _FULL_TENSORS.json)")
        if len(trees) > 1:
            raise RunFormatError(f"{self.path}: holds debugger trees of {len(trees)} models "
                                 f"({', '.join(sorted(trees))}); point at one of the JSON files")
        self.cls, self.tree_path = next(iter(trees.items()))
        self.path = self.tree_path.parent
        self.ranks = [0]
        # Not "class": that holds a qualified name (module.Class) in native runs, and the
        # debugger only wrote the bare class name.
        self._model = {"class_name": self.cls}

    # -- scanning ----------------------------------------------------------------------
    def _scan(self) -> Iterable[Found]:
        try:
            if self.tree_path.stat().st_size > _MAX_JSON:
                raise RunFormatError(f"{self.tree_path}: call tree over {_MAX_JSON >> 20} MiB")
            tree = json.loads(self.tree_path.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise RunFormatError(f"{self.tree_path}: unreadable call tree ({one_line(str(e), 200)})") from None
        if not isinstance(tree, dict):
            raise RunFormatError(f"{self.tree_path}: call tree is not a JSON object")
        self._files = {e.name for e in listdir(self.path) if e.is_file() and e.name.endswith(".safetensors")}
        self._repr_only = 0
        calls: dict[str, int] = {}
        found: list[Found] = []
        self._walk(tree, calls, found, depth=0)
        self._keep_last_writer(found)
        found.extend(self._unreferenced(found))
        self._add_tokens(found)
        self.notes.append("transformers' debugger keeps one forward (the last one), records outputs "
                          "of leaf modules only, and inputs of every module")
        if self._repr_only:
            self.notes.append(f"{self._repr_only} tensor(s) were saved as printed text (use_repr=True): "
                              f"listed without data; re-run the debugger with use_repr=False to compare values")
        return found

    def _module(self, module_path: str) -> str:
        mp = module_path.removesuffix(" (top-level)")
        if mp == self.cls:
            return ""
        if mp.startswith(self.cls + "."):
            return mp[len(self.cls) + 1:]
        return mp

    def _walk(self, node: Any, calls: dict[str, int], out: list[Found], depth: int) -> None:
        if not isinstance(node, dict) or depth > 256:
            return
        mp = node.get("module_path")
        if not isinstance(mp, str):
            self.problems.append(f"{self.tree_path}: a call-tree node without module_path was skipped")
            return
        module = self._module(mp)
        call = calls.get(module, 0)
        calls[module] = call + 1
        file_base = mp.removesuffix(" (top-level)")
        inputs = node.get("inputs")
        if isinstance(inputs, dict):
            for group in ("args", "kwargs"):
                items = inputs.get(group)
                pairs = enumerate(items) if isinstance(items, list) else (
                    items.items() if isinstance(items, dict) else [])
                for k, v in pairs:
                    self._leaves(v, module, call, "input", escape_key(str(k)),
                                 f"{file_base}_inputs_{group}_{k}", out)
        for child in node.get("children") or []:
            self._walk(child, calls, out, depth + 1)
        if "outputs" in node and node["outputs"] is not None:
            self._leaves(node["outputs"], module, call, "output", "", f"{file_base}_outputs", out)

    def _leaves(self, v: Any, module: str, call: int, role: str, path: str, stem: str,
                out: list[Found], depth: int = 0) -> None:
        base = dict(step=0, module=module, call=call, role=role, path=path)
        if _is_tensor(v):
            out.append(self._tensor(v, stem, base))
        elif isinstance(v, list) and depth < 16:
            for i, item in enumerate(v):
                self._leaves(item, module, call, role, f"{path}.{i}" if path else str(i),
                             f"{stem}_{i}", out, depth + 1)
        elif isinstance(v, dict) and depth < 16:
            for k, item in v.items():
                key = escape_key(str(k))
                self._leaves(item, module, call, role, f"{path}.{key}" if path else key,
                             f"{stem}_{k}", out, depth + 1)
        else:
            out.append(Found(**base, is_value=True, value=_repr_value(v)))

    def _tensor(self, v: dict, stem: str, base: dict) -> Found:
        dtype = v["dtype"].removeprefix("torch.") if isinstance(v.get("dtype"), str) else None
        shape = _shape(v.get("shape"))
        value = v.get("value")
        fname = f"{stem}.safetensors"
        if isinstance(value, str) and value.startswith("./"):
            fname = value[2:]
        if isinstance(value, list):
            self._repr_only += 1
            summary = {k: v[k] for k in ("mean", "std", "min", "max") if isinstance(v.get(k), str)}
            return Found(**base, dtype=dtype, shape=shape,
                         extra={"skipped": "saved as printed text (use_repr=True)", "summary": summary})
        # Only plain file names listed in the debug folder are read: a call tree must not
        # be able to point at other files on the machine.
        if "/" in fname or "\\" in fname:
            self.problems.append(one_line(f"{self.tree_path}: refused data path {value!r} "
                                          f"(outside the debug folder)", 300))
            return Found(**base, dtype=dtype, shape=shape, extra={"skipped": "data path outside the folder"})
        if fname not in self._files:
            return Found(**base, dtype=dtype, shape=shape, extra={"skipped": "data file missing", "file": fname})
        return Found(**base, dtype=dtype, shape=shape, source=Source(fname, ("data",)))

    def _keep_last_writer(self, found: list[Found]) -> None:
        """A file written by several calls holds the last one's data: earlier ones lose it."""
        last: dict[str, int] = {}
        for i, f in enumerate(found):
            if f.source is not None:
                last[f.source.file] = i
        lost = 0
        for i, f in enumerate(found):
            if f.source is not None and last[f.source.file] != i:
                later = found[last[f.source.file]]
                f.extra = {**f.extra, "skipped": f"file overwritten by {later.module or '<root>'}"
                                                 f"[{later.call}] (the debugger names files by module path)"}
                f.source = None
                lost += 1
        if lost:
            self.notes.append(f"{lost} record(s) have no data: their file was overwritten by a later "
                              f"call of the same module")

    def _unreferenced(self, found: list[Found]) -> list[Found]:
        used = {f.source.file for f in found if f.source is not None}
        used |= {f.extra.get("file") for f in found}
        out = []
        for fname in sorted(self._files - used, key=natural_key):
            m = _FILE.match(fname)
            if not m or not (m.group("mp") == self.cls or m.group("mp").startswith(self.cls + ".")):
                self.notes.append(one_line(f"file {fname!r} is not part of the {self.cls} call tree; ignored", 300))
                continue
            role = "input" if m.group("role") == "inputs" else "output"
            path = _path_from_name(m.group("rest") or "", role)
            out.append(Found(step=0, module=self._module(m.group("mp")), call=0, role=role, path=path,
                             source=Source(fname, ("data",)), extra={"path_from_file_name": True}))
        if out:
            self.notes.append(f"{len(out)} tensor file(s) missing from the call tree (root outputs, pruned "
                              f"layers) were mapped from their file names")
        return out

    def _add_tokens(self, found: list[Found]) -> None:
        root = {f.path: f for f in found if f.module == "" and f.role == "input" and f.source is not None}
        ids_rec = root.get("input_ids") or root.get("0")
        if ids_rec is None:
            return

        def get(name: str) -> torch.Tensor | None:
            f = root.get(name)
            try:
                t = self._fetch(f.source) if f is not None else None
            except TensortapError:
                return None
            return t if isinstance(t, torch.Tensor) else None

        ids = get(ids_rec.path)
        if ids is None or ids.dim() not in (1, 2):
            return
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        table, _ = token_table(ids, get("position_ids"), attention_mask=get("attention_mask"))
        if table is not None:
            self._token_tables[(0, 0)] = {"step": 0, **table}


def _is_tensor(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("shape"), str) and v["shape"].startswith("torch.Size(") \
        and "dtype" in v


def _shape(v: Any) -> tuple[int, ...] | None:
    m = _SHAPE.match(v) if isinstance(v, str) else None
    if not m:
        return None
    dims = [d.strip() for d in m.group("dims").split(",") if d.strip()]
    return tuple(int(d) for d in dims)


def _repr_value(v: Any) -> Any:
    """A non-tensor value from its printed form, as capture would store it."""
    if not isinstance(v, str):
        return v
    if v in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[v]
    if re.fullmatch(r"-?\d{1,18}", v):
        return int(v)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)(e[-+]?\d+)?", v):
        return float(v)
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    m = re.match(r"^([A-Za-z_][\w.]*)\(", v)
    if m:
        return {"type": m.group(1).rsplit(".", 1)[-1]}
    return v


def _path_from_name(rest: str, role: str) -> str:
    """A record path from a debugger file-name tail (``args_0``, ``kwargs_position_ids``, ``logits``)."""
    parts = rest.split("_") if rest else []
    if role == "input" and parts and parts[0] in ("args", "kwargs"):
        parts = parts[1:]
    if not parts:
        return ""
    # Trailing numbers are tuple positions; the rest is one (possibly underscored) key.
    idx = []
    while parts and parts[-1].isdigit():
        idx.insert(0, parts.pop())
    head = ["_".join(parts)] if parts else []
    return ".".join(head + idx)
