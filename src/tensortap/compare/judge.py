"""Deciding each pair's status with the noise model, in execution order, and its origin.

Run after every pair is measured: a row's allowance depends on the error of the rows it
is computed from (compare.noise). For each floating row this fills ``token_rel_l2``
(the worst token's relative error), ``carried`` (and where it was read:
``carried_from``), ``own_noise``, ``limit``, ``ratio``, ``growth``, ``status`` and, for
diverged outputs, ``origin``:

- ``introduced``: beyond what its inputs carry and its dtype explains: the divergence
  starts here;
- ``carried``: its integer inputs (token ids, positions) already differ;
- ``amplified`` / ``carried`` with a floor run (``--floor``), whose bound replaces the model.

Rows measured against a floor run keep the floor rule's status (compare.pair).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from typing import Callable, Iterable

import numpy as np

from tensortap.compare.noise import GAIN, allowed, own_noise
from tensortap.compare.result import DiffRow
from tensortap.compare.tolerance import dtype_category

Feeds = Callable[[DiffRow], list[tuple]]
"""For mappings whose items are not module calls (anchors): the keys
``(rank, step, module, call, role, path)`` of the rows that feed a row."""



def _float_row(r: DiffRow) -> bool:
    return (r.kind in ("tensor", "estimate") and r.status in ("ok", "diverged")
            and dtype_category(r.dtype_a) == "float" and r.rel_l2 is not None)


def _worst_token(r: DiffRow) -> tuple[float, int | None]:
    """(worst row's relative error, its row index) of a measured floating row."""
    re_ = r.row_errors
    if re_ is None or len(re_) == 0:
        # Identical pairs and estimates have no rows: the tensor's figure stands for them.
        return (0.0 if r.rel_l2 == 0 else float(r.rel_l2 or 0.0)), None
    rel = re_.rel()
    i = int(np.argmax(rel))
    return float(rel[i]), i


def _width(r: DiffRow) -> int:
    shape = r.shape_a or []
    return int(shape[-1]) if shape else 1


def _is_inside(parent: str, child: str) -> bool:
    return parent == "" or child.startswith(parent + ".")


class _State:
    def __init__(self) -> None:
        self.earlier: dict[tuple, float] = defaultdict(float)
        """(rank, module, call, role, path) -> largest error at any earlier step."""
        self.upstream: dict[tuple[int, int], float] = defaultdict(float)
        """(rank, step) -> largest error of any row so far in the step."""
        self.seen_step: set[tuple[int, int]] = set()


def _key(r: DiffRow) -> tuple:
    return (r.rank, r.step, r.module, r.call, r.role, r.path)


def judge(rows: list[DiffRow], feeds: Feeds | None = None) -> None:
    """Decide status, limit and origin of every row in place (rows in execution order)."""
    inputs: dict[tuple, list[DiffRow]] = defaultdict(list)
    by_key = {_key(r): r for r in rows}
    for r in rows:
        if r.role == "input" and r.kind != "value" and r.status in ("ok", "diverged"):
            inputs[(r.rank, r.step, r.module, r.call)].append(r)
    st = _State()
    step_rows: dict[tuple[int, int], list[DiffRow]] = defaultdict(list)
    for r in sorted(rows, key=lambda x: (x.rank, x.step, x.index)):
        step_rows[(r.rank, r.step)].append(r)
    for (rank, step), group in sorted(step_rows.items()):
        tree = _Children()
        for r in group:
            _judge_row(r, st, inputs, by_key, feeds, tree)
            tree.add(r)
        # What a step ends with is what the next step's state (KV cache) may carry.
        for r in group:
            if r.token_rel_l2 is not None:
                k = (r.rank, r.module, r.call, r.role, r.path)
                st.earlier[k] = max(st.earlier[k], r.token_rel_l2, r.carried or 0.0)
    for r in rows:
        r.row_errors = None  # per-token arrays are only needed while judging


class _Children:
    """The outputs judged so far in one step, by module, to find a container's children.

    A container (a decoder layer, the model, the root) computes its output from its
    children's outputs and its inputs: both are what it carries. Children are found by
    name (``named_modules`` nests them: ``model.layers.3.mlp`` is inside
    ``model.layers.3``; the root ``""`` holds everything) and ran during the
    container's call: after its inputs were recorded."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.outputs: dict[str, list[DiffRow]] = defaultdict(list)

    def add(self, r: DiffRow) -> None:
        if r.role != "output" or r.token_rel_l2 is None:
            return
        if r.module not in self.outputs:
            bisect.insort(self.names, r.module)
        self.outputs[r.module].append(r)

    def within(self, module: str, after: int) -> list[DiffRow]:
        """Outputs of modules nested in ``module`` recorded after row ``after``."""
        prefix = module + "." if module else ""
        i = bisect.bisect_left(self.names, prefix) if prefix else 0
        out: list[DiffRow] = []
        while i < len(self.names) and self.names[i].startswith(prefix):
            name = self.names[i]
            if name != module:
                out += [c for c in self.outputs[name] if c.index > after]
            i += 1
        return out


def _sources(r: DiffRow, inputs: dict, by_key: dict, feeds: Feeds | None,
             tree: _Children) -> list[DiffRow]:
    if r.role != "output":
        return []
    ins = list(inputs.get((r.rank, r.step, r.module, r.call), []))
    src = list(ins)
    if feeds is not None:
        src += [by_key[k] for k in feeds(r) if k in by_key and by_key[k].status in ("ok", "diverged")]
    # The container's call began at its first recorded input (or, without inputs, after
    # its previous call's output).
    start = min((i.index for i in ins), default=None)
    if start is None:
        prev = [c.index for c in tree.outputs.get(r.module, []) if c.call < r.call]
        start = max(prev, default=-1)
    src += tree.within(r.module, start)
    return src


def _judge_row(r: DiffRow, st: _State, inputs: dict, by_key: dict, feeds: Feeds | None,
               tree: _Children) -> None:
    src = _sources(r, inputs, by_key, feeds, tree)
    float_src = [s for s in src if _float_row(s) and s.token_rel_l2 is not None]
    int_changed = any(s.status == "diverged" and dtype_category(s.dtype_a) != "float" for s in src)
    # The whole-tensor view of the inputs, as before: kept for the table's x-factor.
    in_rel = [s.rel_l2 for s in float_src if s.rel_l2 is not None]
    if in_rel:
        r.input_rel_l2 = max(in_rel)
    if not _float_row(r):
        return
    e_out, row = _worst_token(r)
    r.token_rel_l2 = e_out
    if row is not None and r.row_errors is not None:
        key = r.row_errors.key(row)
        r.worst_row = list(key) if key is not None else [row]
        r.worst_row_is_token = key is not None
    if float_src:
        top = max(float_src, key=lambda s: s.token_rel_l2)
        carried = top.token_rel_l2
        r.carried_from = ("inputs" if top.role == "input" else
                          "children" if top.module != r.module and _is_inside(r.module, top.module) else "feeds")
        # The sums that produce this tensor run over its direct sources (inputs, feeds),
        # not over a container's children.
        direct = [s for s in float_src if s.role == "input" or not _is_inside(r.module, s.module)]
        reduction = max((_width(s) for s in direct), default=_width(r))
    elif src:  # only integer inputs (token ids): exact unless they differ
        carried, r.carried_from, reduction = 0.0, "inputs", 1
    else:
        carried = st.upstream[(r.rank, r.step)]
        r.carried_from = "upstream" if (r.rank, r.step) in st.seen_step else "none"
        reduction = _width(r)
    if r.kind == "estimate" or any(s.kind == "estimate" for s in float_src):
        # Estimates cover whole tensors, whose error a massive-activation token owns: an
        # estimated input can look far cleaner than the rows a norm re-weights. Without
        # per-token figures, everything upstream in the step is what the row may carry.
        up = st.upstream[(r.rank, r.step)]
        if up > carried:
            carried, r.carried_from = up, "upstream (estimates)"
    earlier = st.earlier.get((r.rank, r.module, r.call, r.role, r.path), 0.0)
    if earlier > carried:
        carried, r.carried_from = earlier, "earlier steps"
    r.carried = carried
    st.seen_step.add((r.rank, r.step))
    st.upstream[(r.rank, r.step)] = max(st.upstream[(r.rank, r.step)], e_out)
    if r.floor_k is not None:
        if r.input_rel_l2:
            r.amplification = r.rel_l2 / r.input_rel_l2
        _origin_with_floor(r, src)
        return
    own = own_noise(r.dtype_a or "float32", r.dtype_b or r.dtype_a or "float32", reduction)
    if r.tol_source and not r.tol_source.endswith("default") and r.rtol is not None:
        own = r.rtol  # the user's tolerance replaces the derived own noise
    r.own_noise = own
    limit = allowed(carried, own)
    r.limit = limit
    base = max(carried, own)
    r.growth = e_out / base if base > 0 else (0.0 if e_out == 0 else math.inf)
    r.amplification = (e_out / carried) if carried > 0 else (math.inf if e_out > 0 else None)
    r.ratio = _ratio(r, limit)
    if r.tripped == "nan_inf":
        r.status = "diverged"
    elif r.ratio > 1.0:
        r.status, r.tripped = "diverged", "token_rel_l2"
    else:
        r.status, r.tripped = "ok", None
    if r.status == "diverged" and r.role == "output":
        r.origin = "carried" if int_changed else "introduced"


def _ratio(r: DiffRow, limit: float) -> float:
    """max over rows of error / allowed error (rows with a near-zero norm use atol)."""
    atol = r.atol or 0.0
    re_ = r.row_errors
    if re_ is None or len(re_) == 0:
        if r.rel_l2 == 0:
            return 0.0
        return (r.rel_l2 or 0.0) / limit if limit > 0 else math.inf
    width = max(1, (r.numel or 0) // max(1, len(re_)))
    bound = limit * re_.norm + atol * math.sqrt(width)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, re_.err / np.where(bound > 0, bound, 1.0),
                         np.where(re_.err > 0, np.inf, 0.0))
    return float(ratio.max()) if ratio.size else 0.0


def _origin_with_floor(r: DiffRow, src: Iterable[DiffRow]) -> None:
    """With a floor run the floor rule decided the status; origin from the sources' status."""
    src = list(src)
    if r.status != "diverged" or r.role != "output":
        return
    if not src:
        r.origin = "unknown"
    elif not any(s.status == "diverged" for s in src):
        r.origin = "introduced"
    elif any(s.status == "diverged" and dtype_category(s.dtype_a) != "float" for s in src):
        r.origin = "carried"
    elif r.amplification is not None and r.amplification >= GAIN:
        r.origin = "amplified"
    else:
        r.origin = "carried"


