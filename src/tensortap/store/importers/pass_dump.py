"""Per-pass dumps: vLLM's debug tensor dump (PR #36576) and SGLang's ``tensor_dump_forward_hook``.

Layout (both tools)::

    DIR/TP0_PP0_Rank0_pid1234/Pass00000.pt     one torch.save'd dict per forward pass
    DIR/TP1_PP0_Rank1_pid1235/Pass00000.pt     one folder per rank

Each file maps qualified module names to the **outputs of leaf modules** (plus the
top-level module, ``model`` by default): a tensor, or a list of the tensors of a tuple
output. The top-level module's hook also adds ``<top>.forward_batch_info.input_ids`` /
``.positions`` (and ``.seq_lens`` in SGLang) from its inputs.

Mapping: ``PassN.pt`` -> step N, ``RankR`` -> rank R; a module entry -> role ``output``,
path ``""`` (a list: ``0``, ``1`` …); ``forward_batch_info.*`` and ``pp_proxy_tensors.*``
-> role ``input`` of the top-level module with that path, and the token table.

The tools' flush order is undone: the file is written inside the top-level module's
hook *before* that module's own output is added, so the top-level output and every
module that runs after it (``lm_head``, ``logits_processor``) land in the *next* pass
file. Those leading entries of ``PassN.pt`` are mapped back to step ``N-1``; the last
pass never gets them (listed in notes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from tensortap.errors import RunFormatError, TensortapError, one_line
from tensortap.store.importers.base import Found, ImportedRun, Source, problem_text, listdir
from tensortap.store.importers.tokens import token_table

RANK_DIR = re.compile(r"^TP(?P<tp>\d+)_PP(?P<pp>\d+)_Rank(?P<rank>\d+)_pid(?P<pid>\d+)$")
PASS_FILE = re.compile(r"^Pass(\d+)\.pt$")
_FBI = ".forward_batch_info."
_PPX = ".pp_proxy_tensors."
_VLLM_POSITIONAL = {"forward_batch_info.input_ids": "0", "forward_batch_info.positions": "1"}


def rank_dirs(path: Path) -> list[tuple[int, Path]]:
    """``(rank, folder)`` of every rank folder at ``path`` (or ``path`` itself if it is one)."""
    if not path.is_dir():
        return []
    m = RANK_DIR.match(path.name)
    if m:
        return [(int(m.group("rank")), path)]
    return [(int(m.group("rank")), Path(e.path)) for e in listdir(path)
            if e.is_dir() and (m := RANK_DIR.match(e.name))]


class PassDumpRun(ImportedRun):
    """A ``DIR`` of ``TP*_PP*_Rank*_pid*/Pass*.pt`` folders (or one such folder)."""

    format_name = "pass-dump"
    tool_name = "vllm-debug-tensor-dump"
    family = "vllm"

    def _check_layout(self) -> None:
        found = rank_dirs(self.path)
        if not found:
            nested = [n for n in ("target", "draft") if rank_dirs(self.path / n)]
            if nested:
                raise RunFormatError(f"{self.path}: holds the {' and '.join(nested)} dumps of a "
                                     f"speculative-decoding run; point at {self.path / nested[0]}")
            raise RunFormatError(f"{self.path}: not a pass dump (no TP*_PP*_Rank*_pid* folders)")
        chosen: dict[int, Path] = {}
        for rank, d in sorted(found, key=lambda x: _mtime(x[1])):
            if rank in chosen:
                self.notes.append(one_line(
                    f"rank {rank} has several dump folders ({chosen[rank].name}, {d.name}): read the "
                    f"newest, {d.name}; point at a folder holding one dump to choose", 400))
            chosen[rank] = d  # sorted oldest first, so the newest wins
        self._rank_dirs = dict(sorted(chosen.items()))
        self.ranks = list(self._rank_dirs)
        base = self.path if not RANK_DIR.match(self.path.name) else self.path.parent
        self.path = base
        self.tool_name = self._guess_tool()
        self.family = "sglang" if self.tool_name.startswith("sglang") else "vllm"

    def _guess_tool(self) -> str:
        # SGLang records seq_lens from its ForwardBatch; vLLM's dumper records only
        # input_ids and positions. Decided from the first pass file's key names.
        for d in self._rank_dirs.values():
            files = self._pass_files(d)
            if files:
                try:
                    obj = self._fetch(Source(files[0][1]))
                except TensortapError as e:
                    return "vllm-debug-tensor-dump"  # the scan reports the damaged file
                if isinstance(obj, dict) and any(str(k).endswith(_FBI + "seq_lens") for k in obj):
                    return "sglang-tensor-dump"
                return "vllm-debug-tensor-dump"
        return "vllm-debug-tensor-dump"

    def _pass_files(self, d: Path) -> list[tuple[int, str]]:
        rel = d.relative_to(self.path).as_posix() if d != self.path else ""
        out = [(int(m.group(1)), f"{rel}/{e.name}" if rel else e.name)
               for e in listdir(d) if e.is_file() and (m := PASS_FILE.match(e.name))]
        return sorted(out)

    # -- scanning ----------------------------------------------------------------------
    def _scan(self) -> Iterable[Found]:
        self.notes.append("pass dumps hold outputs of leaf modules (and the top-level module) only; "
                          "a module called twice in one pass keeps its last call; tuple outputs "
                          "lose None items, and a one-tensor tuple is stored as that tensor (path '')")
        for rank, d in self._rank_dirs.items():
            yield from self._scan_rank(rank, d)

    def _scan_rank(self, rank: int, d: Path) -> Iterable[Found]:
        files = self._pass_files(d)
        if not files:
            self.problems.append(f"{d}: no Pass*.pt files")
            return
        numbers = [n for n, _ in files]
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if missing:
            self.notes.append(f"rank {rank}: pass files missing for steps {missing[:20]}")
        top: str | None = None
        pre_top: set[str] | None = None
        tail_names: list[str] = []
        for i, (step, rel) in enumerate(files):
            try:
                obj = self._fetch(Source(rel))
            except TensortapError as e:  # a damaged pass must not hide the others
                self._damaged += 1
                self.problems.append(one_line(f"{self.path / rel}: {problem_text(e)}", 400))
                continue
            if not isinstance(obj, dict):
                self._damaged += 1
                self.problems.append(f"{self.path / rel}: holds a {type(obj).__name__}, not a dict of tensors")
                continue
            keys = [k for k in obj if isinstance(k, str)]
            if len(keys) != len(obj):
                self.problems.append(f"{self.path / rel}: {len(obj) - len(keys)} entries with non-text keys skipped")
            if top is None:
                top = _top_name(keys)
            lead = _leading(keys, top)
            if pre_top is None:
                if lead and lead[0] == top:
                    # vLLM with SKIP_PASSES: the last skipped pass's tail is in the first file.
                    self.notes.append(one_line(
                        f"rank {rank}: {rel} starts with {len(lead)} output(s) of a forward that has no "
                        f"pass file (a skipped warm-up pass), not mapped: {', '.join(lead[:8])}", 400))
                    skip, tail, pre_top = set(lead), [], set()
                else:
                    skip, tail, pre_top = set(), [], set(lead)
            else:
                tail = [] if step == 0 else _tail(lead, pre_top)
                skip = set()
            tail_set = set(tail)
            if tail and not tail_names:
                tail_names = tail
            for key in keys:
                if key in skip:
                    continue
                in_tail = key in tail_set
                if in_tail and numbers and step - 1 not in numbers:
                    self.notes.append(f"rank {rank}: {rel}: {key!r} belongs to step {step - 1}, "
                                      f"which has no pass file")
                yield from self._entries(rank, step - 1 if in_tail else step, rel, key, obj[key], top, in_tail)
            self._add_tokens(rank, step, obj, top)
        if top is None:
            self.notes.append(f"rank {rank}: no top-level module found in the keys; outputs after it "
                              f"(lm_head…) are kept in the pass file's step")
        elif tail_names:
            self.notes.append(one_line(
                f"rank {rank}: step {numbers[-1]} (the last pass) has no {', '.join(tail_names[:6])}: "
                f"the dumper writes them into the next pass file, which is never written", 400))

    def _entries(self, rank: int, step: int, rel: str, key: str, value: Any, top: str | None,
                 moved: bool) -> Iterable[Found]:
        module, role, path = key, "output", ""
        for marker, prefix in ((_FBI, "forward_batch_info"), (_PPX, "pp_proxy_tensors")):
            if top and key.startswith(top + marker):
                module, role, path = top, "input", f"{prefix}.{key[len(top) + len(marker):]}"
        if self.family == "vllm" and role == "input" and path in _VLLM_POSITIONAL:
            # vLLM's dumper takes these from the top-level module's positional inputs 0 and 1.
            path = _VLLM_POSITIONAL[path]
        extra = {"from_next_pass_file": True} if moved else {}
        if isinstance(value, (list, tuple)):
            for j, item in enumerate(value):
                yield Found(step=step, module=module, call=0, role=role,
                            path=f"{path}.{j}" if path else str(j), rank=rank,
                            source=Source(rel, (key, j)), extra=dict(extra))
            return
        if isinstance(value, torch.Tensor):
            yield Found(step=step, module=module, call=0, role=role, path=path, rank=rank,
                        source=Source(rel, (key,)), extra=extra)
            return
        yield Found(step=step, module=module, call=0, role=role, path=path, rank=rank,
                    is_value=True, value=value, extra=extra)

    def _add_tokens(self, rank: int, step: int, obj: dict, top: str | None) -> None:
        if not top:
            return
        ids = obj.get(top + _FBI + "input_ids")
        if not isinstance(ids, torch.Tensor):
            return
        pos = obj.get(top + _FBI + "positions")
        lens = obj.get(top + _FBI + "seq_lens")
        table, note = token_table(ids, pos if isinstance(pos, torch.Tensor) else None,
                                  seq_lens=lens if isinstance(lens, torch.Tensor) else None)
        if table is not None:
            self._token_tables[(rank, step)] = {"step": step, **table}
        if note and not any(note in n for n in self.notes):
            self.notes.append(f"token tables: {note}")


def _top_name(keys: list[str]) -> str | None:
    """The top-level module's name: prefix of forward_batch_info keys, else ``model`` if used."""
    for k in keys:
        if _FBI in k:
            return k.split(_FBI, 1)[0]
    if any(k == "model" or k.startswith("model.") for k in keys):
        return "model"
    return None


def _leading(keys: list[str], top: str | None) -> list[str]:
    """Keys before the first key inside the top-level module (``top.…``)."""
    if top is None:
        return []
    out = []
    for k in keys:
        if k.startswith(top + "."):
            break
        out.append(k)
    return out


def _tail(lead: list[str], pre_top: set[str]) -> list[str]:
    """The leading keys that belong to the previous pass: up to the first pre-top module."""
    out = []
    for k in lead:
        if k in pre_top:
            break
        out.append(k)
    return out


def _mtime(p: Path) -> float:
    try:
        return os.stat(p).st_mtime
    except OSError:
        return 0.0
