"""vLLM intermediate tensor logging (PR #21215, unmerged): ``RUN/step_N/<module>[_k]/...``.

Layout written by ``intermediates_logging.py``::

    OUTPUT_DIR/<uuid>/step_0/module_calls.txt          module names in pre-hook order
    OUTPUT_DIR/<uuid>/step_0/model.layers.0.mlp/        first call of the module in step 0
        inputs.json  outputs.json                      structure: type/shape/dtype/numel
        inputs_0_cuda_0.pt                             positional input 0 (nested: inputs_0_1_…)
        outputs_cuda_0.pt                              a lone tensor output (tuple: outputs_0_…)
        post_fwd_inputs_0_cuda_0.pt                    with log_post_fwd_inputs
    OUTPUT_DIR/<uuid>/step_0/model.layers.0.mlp_1/      its second call (call index 1)

Mapping: ``step_N`` -> step N; directory ``<module>_<k>`` -> call k when ``<module>``
also exists in the dump (else the whole name is the module); positional input i ->
path ``i`` (nested ``i.j``, dict keys by name); a lone output -> path ``""``, tuple
item i -> ``i``; ``post_fwd_inputs`` -> role ``input`` with path ``post_forward.<i>``.
The ``.json`` structure drives the mapping (so ``_`` in dict keys is not ambiguous);
files it does not describe are mapped from their names and flagged. Size-skipped
tensors (a ``.json`` stub with ``skipped``) and non-tensor inputs become records without
data. The device in file names (``cuda_1``) becomes the rank when several devices
wrote into one run. Kwargs are not logged by vLLM (its pre-hook sees positional
arguments only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tensortap.errors import RunFormatError, one_line
from tensortap.store.importers.base import Found, ImportedRun, Source, escape_key, listdir, natural_key

_STEP = re.compile(r"^step_(\d+)$")
_CALL_SUFFIX = re.compile(r"^(.+)_(\d+)$")
_DEVICE = re.compile(r"^(?P<type>[a-z]+)(?:_(?P<idx>\d+))?$")
# (file prefix, role, path prefix)
_GROUPS = (("post_fwd_inputs", "input", "post_forward"), ("inputs", "input", ""), ("outputs", "output", ""))
_MAX_JSON = 64 * 1024 * 1024


def find_root(path: Path) -> Path | None:
    """The run folder (holding ``step_N``) at or directly under ``path``; None if neither."""
    if not path.is_dir():
        return None
    entries = listdir(path)
    if any(e.is_dir() and _STEP.match(e.name) for e in entries):
        return path
    runs = [Path(e.path) for e in entries if e.is_dir() and any(
        c.is_dir() and _STEP.match(c.name) for c in listdir(Path(e.path)))]
    if len(runs) > 1:
        raise RunFormatError(
            f"{path}: holds {len(runs)} vLLM intermediate-logging runs "
            f"({', '.join(r.name for r in runs[:5])}{' …' if len(runs) > 5 else ''}); "
            f"point at one of them")
    return runs[0] if runs else None


class VllmIntermediateRun(ImportedRun):
    """A vLLM intermediate-logging run folder (the ``<uuid>`` folder, or the output dir holding one)."""

    format_name = "vllm-il"
    tool_name = "vllm-intermediate-logging"
    family = "vllm"

    def _check_layout(self) -> None:
        root = find_root(self.path)
        if root is None:
            raise RunFormatError(f"{self.path}: not a vLLM intermediate-logging run (no step_N folders)")
        self.path = root
        self.ranks = [0]

    # -- scanning -----------------------------------------------------------------------
    def _scan(self) -> list[Found]:
        steps = sorted((int(m.group(1)), Path(e.path)) for e in listdir(self.path)
                       if e.is_dir() and (m := _STEP.match(e.name)))
        all_dirs = {e.name for _, d in steps for e in listdir(d) if e.is_dir()}
        devices: set[str] = set()
        found: list[Found] = []
        unordered = 0
        for step, sdir in steps:
            calls = self._call_order(sdir)
            dirs = {e.name: Path(e.path) for e in listdir(sdir) if e.is_dir()}
            order = [n for n in calls if n in dirs]
            rest = sorted((n for n in dirs if n not in set(order)), key=natural_key)
            unordered += len(rest) if calls else 0
            names = [(n, *self._split_call(n, all_dirs)) for n in order + rest]
            for kind, (dname, module, call) in _execution_order(names):
                groups = ("inputs", "post_fwd_inputs") if kind == "pre" else ("outputs",)
                for g in groups:
                    for f in self._group(step, dirs[dname], module, call, g):
                        if f.device:
                            devices.add(f.device)
                        found.append(f)
        if unordered:
            self.notes.append(f"{unordered} module folder(s) missing from module_calls.txt were "
                              f"ordered by name")
        self._assign_ranks(found, devices)
        self.notes.append("vLLM intermediate logging records positional inputs only (no kwargs)")
        return found

    @staticmethod
    def _call_order(sdir: Path) -> list[str]:
        p = sdir / "module_calls.txt"
        try:
            text = p.read_text(errors="replace")
        except OSError:
            return []
        # Several workers of one run append to the same file: keep first occurrences.
        return list(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip()))

    def _split_call(self, dname: str, all_dirs: set[str]) -> tuple[str, int]:
        m = _CALL_SUFFIX.match(dname)
        if m and m.group(1) in all_dirs:
            return m.group(1), int(m.group(2))
        if m:
            # Either a module whose name ends in _<k>, or call k of a module whose other
            # calls were filtered out (module_call_match "name:k"). Names win; say so.
            note = (f"folder {dname!r} read as a module name; if it is call {m.group(2)} of "
                    f"{m.group(1)!r} (module_call_match ':{m.group(2)}'), filter by that name")
            if note not in self.notes:
                self.notes.append(one_line(note, 300))
        return dname, 0

    def _group(self, step: int, mdir: Path, module: str, call: int, group: str) -> list[Found]:
        """Records of one of ``inputs``/``post_fwd_inputs``/``outputs`` of one module call."""
        role, prefix = next((r, p) for g, r, p in _GROUPS if g == group)
        files = {e.name for e in listdir(mdir) if e.is_file()}
        # "post_fwd_inputs_…" does not start with "inputs_", so the groups cannot mix.
        pts = {f for f in files if f.endswith(".pt") and f.startswith(group + "_")}
        structure = _read_json(mdir / f"{group}.json") if f"{group}.json" in files else None
        rel = mdir.relative_to(self.path).as_posix()
        out: list[Found] = []
        used: set[str] = set()

        def emit(comps: tuple, leaf: Any) -> None:
            path = ".".join(([prefix] if prefix else []) + [escape_key(str(c)) for c in comps])
            stem = "_".join([group, *(str(c) for c in comps)])
            base = dict(step=step, module=module, call=call, role=role, path=path)
            if not _is_tensor_node(leaf):
                out.append(Found(**base, is_value=True, value=_json_leaf(leaf)))
                return
            hits = sorted(f for f in pts if f.startswith(stem + "_") and _DEVICE.match(f[len(stem) + 1:-3]))
            for f in hits:
                used.add(f)
                out.append(Found(**base, source=Source(f"{rel}/{f}"), device=_device(f[len(stem) + 1:-3])))
            if hits:
                return
            stub = _read_json(mdir / f"{stem}.json") if f"{stem}.json" in files else None
            info = stub if isinstance(stub, dict) and "skipped" in stub else leaf
            why = (str(info.get("skipped")) if "skipped" in info
                   else "no data file (filtered by device_names, or missing)")
            out.append(Found(**base, dtype=_dtype(info.get("dtype")), shape=_shape(info.get("shape")),
                             device=info.get("device") if isinstance(info.get("device"), str) else None,
                             extra={"skipped": one_line(why, 200)}))

        if isinstance(structure, dict) and "skipped" in structure:
            emit((), structure)  # a lone tensor over max_tensor_size: the stub replaced outputs.json
        elif structure is not None:
            leaves = list(_leaves(structure))
            if pts and not any(_is_tensor_node(leaf) for _, leaf in leaves):
                # A sidecar in a form this reader does not know, beside the tensors it
                # describes: read the tensors by their file names instead.
                leaves = []
            # Inputs are always a tuple of positional arguments; outputs may be a lone tensor.
            for comps, leaf in leaves:
                emit(comps, leaf)
        # Files the structure did not describe (it lists 20 items at most, or is missing).
        for f in sorted(pts - used, key=natural_key):
            rest = f[len(group) + 1:-3]
            m = re.match(r"^(?:(?P<keys>.*)_)?(?P<dev>[a-z]+(?:_\d+)?)$", rest)
            if not m:
                continue
            comps = tuple(m.group("keys").split("_")) if m.group("keys") else ()
            path = ".".join(([prefix] if prefix else []) + list(comps))
            out.append(Found(step=step, module=module, call=call, role=role, path=path,
                             source=Source(f"{rel}/{f}"), device=_device(m.group("dev")),
                             extra={"path_from_file_name": True}))
        return out

    def _assign_ranks(self, found: list[Found], devices: set[str]) -> None:
        indexed = sorted({d for d in devices if ":" in d}, key=natural_key)
        if len(indexed) <= 1:
            return
        for f in found:
            if f.device and ":" in f.device:
                f.rank = int(f.device.rsplit(":", 1)[1])
        self.ranks = sorted({int(d.rsplit(":", 1)[1]) for d in indexed})
        self.notes.append(f"tensors from {len(indexed)} devices ({', '.join(indexed)}) were read as "
                          f"ranks {self.ranks} (device index = rank)")


def _execution_order(names: list[tuple[str, str, int]]):
    """``("pre"|"post", (dir, module, call))`` in hook order, from pre-hook order alone.

    module_calls.txt lists calls as their pre-hooks ran; a call's outputs come after
    those of every call nested in it, and nesting follows the module name hierarchy.
    """
    stack: list[tuple[str, str, int]] = []
    for item in names:
        while stack and not item[1].startswith(stack[-1][1] + "."):
            yield "post", stack.pop()
        stack.append(item)
        yield "pre", item
    while stack:
        yield "post", stack.pop()


def _read_json(p: Path) -> Any:
    try:
        if p.stat().st_size > _MAX_JSON:
            return None
        return json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _is_tensor_node(x: Any) -> bool:
    """A structure leaf describing a tensor. Writers differ (vLLM's ``{"type": "tensor"}``,
    others ``{"type": "torch.Tensor"}`` or just ``{"shape", "dtype"}``): a sidecar is the
    metadata of its tensor, never a record of its own."""
    if not isinstance(x, dict):
        return False
    kind = x.get("type")
    return (kind in ("tensor", "tensor_error") or "skipped" in x
            or (isinstance(kind, str) and kind.lower().endswith("tensor"))
            or ("shape" in x and "dtype" in x))


def _leaves(node: Any, comps: tuple = (), depth: int = 0):
    """``(components, leaf)`` for every leaf of vLLM's JSON structure description."""
    if isinstance(node, dict) and node.get("type") in ("list", "tuple") and depth < 16:
        items = node.get("items", node.get("sample"))
        n = node.get("length")
        items = items if isinstance(items, list) else []
        if isinstance(n, int):
            items = items[:n]  # vLLM samples tensor[:100] although it says 20
        for i, v in enumerate(items):
            yield from _leaves(v, comps + (i,), depth + 1)
        return
    if isinstance(node, list) and depth < 16:
        for i, v in enumerate(node):  # a plain JSON list of the items
            yield from _leaves(v, comps + (i,), depth + 1)
        return
    if isinstance(node, dict) and node.get("type") == "dict" and depth < 16:
        items = node.get("items", node.get("sample"))
        for k, v in (items.items() if isinstance(items, dict) else []):
            yield from _leaves(v, comps + (k,), depth + 1)
        return
    yield comps, node


def _json_leaf(leaf: Any) -> Any:
    if isinstance(leaf, dict) and "type" in leaf:
        return {"type": str(leaf["type"])}  # capture stores objects as {"type": name} too
    return leaf


def _device(token: str) -> str:
    m = _DEVICE.match(token)
    if m and m.group("idx") is not None:
        return f"{m.group('type')}:{m.group('idx')}"
    return token


def _dtype(v: Any) -> str | None:
    return v.removeprefix("torch.") if isinstance(v, str) else None


def _shape(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        return tuple(v)
    return None
