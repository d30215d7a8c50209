"""SGLang's ``debug_utils/dumper.py``: a flat folder of ``key=value___key=value.pt`` files.

Layout::

    DUMPER_DIR/<exp_name>/step=0___rank=0___dump_index=1___name=input_ids___recompute_status=disabled.pt
    DUMPER_DIR/<exp_name>/step=0___rank=0___dump_index=7___name=non_intrusive__model.layers.0.mlp.output___…___layer_id=0.pt

Each file is ``torch.save({"value": value, "meta": {...}})``; the file name holds the
tags (``step``, ``rank``, ``dump_index``, ``name``, ``recompute_status``, any
``dumper.dump(..., **tags)`` and context tags such as ``layer_id``).

Mapping: ``step``/``rank`` tags -> step/rank; order within a rank = ``dump_index``.
Non-intrusive names ``non_intrusive__<module>.inputs.<i|kwarg>[.<k>]`` /
``…<module>.output[.<k>]`` -> that module, role ``input``/``output``, path ``i``/kwarg
(``.k`` appended); other names -> a module of that name (``name[tag=v,…]`` when extra
tags such as ``layer_id`` distinguish them), role ``output``. Repeats of one key in a
step are calls 0, 1, …. ``input_ids``/``positions``/``seq_lens``/``rids`` (the dumper's
core fields) also build the token table, with ``rids`` as request ids.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import torch

from tensortap.errors import RunFormatError, TensortapError, one_line
from tensortap.store.importers.base import Found, ImportedRun, Source, problem_text, flatten_loaded, listdir
from tensortap.store.importers.tokens import token_table

_PREFIX = "non_intrusive__"
_NI = re.compile(r"^(?:(?P<mod>.+)\.)?(?P<role>inputs|output)(?:\.(?P<rest>.+))?$")
_KEY_TAGS = ("step", "rank", "dump_index", "name")
_RANK_TAGS = ("pp_rank", "tp_rank", "cp_rank", "ep_rank", "etp_rank")
_CORE = ("input_ids", "positions", "seq_lens", "req_pool_indices", "rids")


def parse_name(file_name: str) -> dict[str, Any] | None:
    """The tags of a dumper file name, or None if it is not one (needs ``name``, ``step``)."""
    if not file_name.endswith(".pt"):
        return None
    tags: dict[str, Any] = {}
    for part in file_name[:-3].split("___"):
        key, sep, value = part.partition("=")
        if not sep or not key:
            return None
        tags[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    if "name" not in tags or not isinstance(tags.get("step"), int):
        return None
    return tags


def find_root(path: Path) -> Path | None:
    """The experiment folder holding dumper files: ``path`` or its only child that holds them."""
    if not path.is_dir():
        return None
    if any(e.is_file() and parse_name(e.name) for e in listdir(path)):
        return path
    exps = [Path(e.path) for e in listdir(path)
            if e.is_dir() and any(c.is_file() and parse_name(c.name) for c in listdir(Path(e.path)))]
    if len(exps) > 1:
        raise RunFormatError(f"{path}: holds {len(exps)} SGLang dumper experiments "
                             f"({', '.join(x.name for x in exps[:5])}{' …' if len(exps) > 5 else ''}); "
                             f"point at one of them")
    return exps[0] if exps else None


class SglangDumperRun(ImportedRun):
    """An SGLang dumper experiment folder (``DUMPER_DIR/<exp_name>``, or the dir holding one)."""

    format_name = "sglang-dumper"
    tool_name = "sglang-dumper"
    family = "sglang"

    def _check_layout(self) -> None:
        root = find_root(self.path)
        if root is None:
            raise RunFormatError(f"{self.path}: not an SGLang dumper folder (no step=…___name=….pt files)")
        self.path = root
        self._files = sorted(
            ((tags, e.name) for e in listdir(root) if e.is_file() and (tags := parse_name(e.name))),
            key=lambda x: (x[0].get("rank", 0) if isinstance(x[0].get("rank"), int) else 0,
                           x[0].get("dump_index", 0) if isinstance(x[0].get("dump_index"), int) else 0,
                           x[1]))
        self.ranks = sorted({t.get("rank", 0) for t, _ in self._files if isinstance(t.get("rank", 0), int)})
        self._engine_extra = {"exp_name": root.name}

    def _scan(self) -> Iterable[Found]:
        calls: dict[tuple, int] = {}
        core: dict[tuple[int, int], dict[str, Any]] = {}
        for tags, fname in self._files:
            rank = tags.get("rank", 0) if isinstance(tags.get("rank", 0), int) else 0
            step = tags["step"]
            module, role, path = self._key(tags)
            try:
                obj = self._fetch(Source(fname))
            except TensortapError as e:
                self._damaged += 1
                self.problems.append(one_line(f"{self.path / fname}: {problem_text(e)}", 400))
                continue
            wrapped = isinstance(obj, dict) and "value" in obj
            value = obj["value"] if wrapped else obj
            meta = obj.get("meta") if wrapped and isinstance(obj.get("meta"), dict) else {}
            extra = {k: tags[k] for k in tags if k in _RANK_TAGS}
            if isinstance(meta.get("dims"), str):
                extra["dims"] = meta["dims"]
            self._run_meta(meta)
            name = str(tags["name"])
            if name in _CORE:
                core.setdefault((rank, step), {}).setdefault(name, value)
            base_keys = ("value",) if wrapped else ()
            items = ([("", base_keys, value)] if not isinstance(value, (list, tuple, dict))
                     or name == "rids" else
                     [(p, base_keys + k, v) for p, k, v in flatten_loaded(value)])
            for sub, keys, leaf in items:
                full = ".".join(x for x in (path, sub) if x)
                key = (rank, step, module, role, full)
                call = calls.get(key, 0)
                calls[key] = call + 1
                if isinstance(leaf, torch.Tensor):
                    yield Found(step=step, module=module, call=call, role=role, path=full, rank=rank,
                                source=Source(fname, keys), extra=dict(extra))
                else:
                    yield Found(step=step, module=module, call=call, role=role, path=full, rank=rank,
                                is_value=True, value=leaf, extra=dict(extra))
        self._build_tokens(core)

    def _key(self, tags: dict[str, Any]) -> tuple[str, str, str]:
        """``(module, role, path)`` of one file from its tags."""
        name = str(tags["name"])
        others = {k: v for k, v in tags.items() if k not in _KEY_TAGS and k not in _RANK_TAGS
                  and not (k == "recompute_status" and v == "disabled")}
        if name.startswith(_PREFIX):
            m = _NI.match(name[len(_PREFIX):])
            if m:
                # layer_id is set automatically from the module path: the name already says it.
                others.pop("layer_id", None)
                module = _tagged(m.group("mod") or "", others)
                return module, "input" if m.group("role") == "inputs" else "output", m.group("rest") or ""
        return _tagged(name, others), "output", ""

    def _run_meta(self, meta: dict[str, Any]) -> None:
        eng = self.info["engine"]
        for k in ("world_size", "tokenizer_path"):
            if k in meta and k not in eng and isinstance(meta[k], (int, str)):
                eng[k] = meta[k]
                if k == "world_size":
                    self.info["parallel"]["world_size"] = meta[k]

    def _build_tokens(self, core: dict[tuple[int, int], dict[str, Any]]) -> None:
        rid_index: dict[str, int] = {}
        notes: set[str] = set()
        for (rank, step), fields in sorted(core.items()):
            ids = fields.get("input_ids")
            if not isinstance(ids, torch.Tensor):
                continue
            pos, lens, rids = fields.get("positions"), fields.get("seq_lens"), fields.get("rids")
            rids = [str(r) for r in rids] if isinstance(rids, (list, tuple)) else None
            table, note = token_table(ids, pos if isinstance(pos, torch.Tensor) else None,
                                      seq_lens=lens if isinstance(lens, torch.Tensor) else None,
                                      request_ids=rids)
            if note:
                notes.add(f"token tables: {note}")
            if table is None:
                continue
            if rids and max(table["request"], default=-1) + 1 == len(rids):
                # A request keeps its index across steps: number them by request id.
                for r in rids:
                    rid_index.setdefault(r, len(rid_index))
                table["request"] = [rid_index[rids[r]] if r >= 0 else -1 for r in table["request"]]
            self._token_tables[(rank, step)] = {"step": step, **table}
        self.notes.extend(sorted(notes))


def _tagged(name: str, tags: dict[str, Any]) -> str:
    if not tags:
        return name
    return f"{name}[{','.join(f'{k}={v}' for k, v in tags.items())}]"
