"""``--map auto`` across engines: anchor items whose rows are lined up token by token.

For every anchor of run A at step ``s``, the item's tensor holds one row per token of
that step that run B also computed (wherever B computed it: B may have scheduled the
token in another step, e.g. chunked prefill), in A's row order; B's item holds the same
tokens in the same order. Tokens only one engine has (padding, a request that stopped
early in one engine) are left out and counted in the mapping's notes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator

import torch

from tensortap.compare.anchors import TokenKey, check_identities, evaluate, row_keys_for_shape
from tensortap.compare.mapping import Item
from tensortap.integrations.anchors.vocab import AnchorExpr, AnchorSet, RecordIndex, anchor_feeds, anchor_order_key
from tensortap.integrations.registry import build_anchor_set, engine_name
from tensortap.store.reader import Run
from tensortap.store.record import Record



class _Side:
    """One run's anchors, record index, and where each token's row lives."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.index = RecordIndex(run)
        self.set: AnchorSet = build_anchor_set(run, self.index)
        self.engine = engine_name(run)

    def rows(self, step: int, expr: AnchorExpr) -> list[TokenKey | None] | None:
        rec = self.index.get(step, expr.terms[0])
        if rec is None or rec.shape is None:
            return None
        named = row_keys_for_shape(self.run.tokens(step), expr.shape_of(rec.shape), expr.rows)
        return named[1] if named else None

    def features(self, step: int, expr: AnchorExpr) -> int:
        rec = self.index.get(step, expr.terms[0])
        shape = expr.shape_of(rec.shape)
        named = row_keys_for_shape(self.run.tokens(step), shape, expr.rows)
        per_row = math.prod(shape) // max(named[0], 1) if named else shape[-1]
        width = shape[-1]
        per_row = per_row // width * expr.width(width)
        return per_row * len(expr.ranks)


class AnchorMapping:
    """Maps two runs of different engines (hf, vllm) onto shared anchors."""

    name = "auto"

    def __init__(self, run_a: Run, run_b: Run) -> None:
        self.sides = {"a": _Side(run_a), "b": _Side(run_b)}
        self.notes: list[str] = []
        self._plan: dict[tuple[int, str], list[TokenKey]] = {}
        self._where_b: dict[tuple[str, str], dict[TokenKey, int]] = {}
        self._build()
        self._present = {a for _, a in self._plan}
        self._layers = sorted({int(a.split(".")[1]) for a in self._present if a.startswith("layers.")})

    # -- planning ---------------------------------------------------------------------
    def _b_locations(self, anchor: str) -> dict[TokenKey, int]:
        """Token -> B's step that computed it, for one anchor."""
        b = self.sides["b"]
        where: dict[TokenKey, int] = {}
        for (step, a), expr in b.set.points.items():
            if a != anchor:
                continue
            for k in b.rows(step, expr) or []:
                if k is not None and k not in where:
                    where[k] = step
        return where

    def _build(self) -> None:
        a, b = self.sides["a"], self.sides["b"]
        anchors_b = set(b.set.anchors())
        missing = [x for x in a.set.anchors() if x not in anchors_b]
        if missing:
            self.notes.append(f"{_absent(b)} in {b.engine}: {', '.join(missing[:12])}"
                              + (" …" if len(missing) > 12 else ""))
        extra = [x for x in b.set.anchors() if x not in set(a.set.anchors())]
        if extra:
            self.notes.append(f"{_absent(a)} in {a.engine}: {', '.join(extra[:12])}")
        for side in (a, b):
            if side.set.points and not any(x.startswith("layers.") for x in side.set.anchors()):
                self.notes.append(f"no anchor adapter for the layers of {side.engine} model type "
                                  f"{side.set.family or '?'!r}: only embed/final_norm/logits are "
                                  "anchored (pass --map FILE, or --map none for raw names)")
            for why in side.set.unavailable.items():
                self.notes.append(f"not available in {side.engine}: {why[0]} ({why[1]})")
        dropped = 0
        where_cache: dict[str, dict[TokenKey, int]] = {}
        for (step, anchor), expr in a.set.points.items():
            if anchor not in anchors_b:
                continue
            where = where_cache.get(anchor)
            if where is None:
                where = where_cache[anchor] = self._b_locations(anchor)
            keys = [k for k in (a.rows(step, expr) or []) if k is not None]
            common = [k for k in keys if k in where]
            dropped += len(keys) - len(common)
            if common:
                self._plan[(step, anchor)] = common
        self._where = where_cache
        if dropped:
            self.notes.append(f"{dropped} token row(s) of run A have no counterpart in run B "
                              "(compared on the tokens both engines computed)")
        for side in (a, b):
            bad = [c for c in check_identities(side.index, side.set) if not c.ok]
            if bad:
                worst = max(bad, key=lambda c: c.rel_err)
                self.notes.append(f"identity check failed in {side.engine}: {worst.identity} at step "
                                  f"{worst.step} (rel err {worst.rel_err:.2e}); its anchors may be mislabeled")

    def pairs_anything(self) -> bool:
        """Whether any anchor of A has tokens that B computed too."""
        return bool(self._plan)

    def why_empty(self) -> str:
        """Why no anchor paired (for the fall-back note)."""
        a, b = self.sides["a"], self.sides["b"]
        for side, what in ((a, "A"), (b, "B")):
            if not side.set.points:
                fam = side.set.family or "unknown model type"
                return f"no decoder structure recognised in run {what} ({side.engine}, {fam})"
            if not any(side.run.tokens(s) for s in side.set.steps()):
                return f"run {what} has no token table to line tokens up"
        return "the runs share no token (different prompts?)"

    def feeds(self, row) -> list[tuple]:
        """Keys of the anchor rows this row is computed from (for amplification)."""
        parallel = self.sides["a"].set.parallel_residual
        return [(row.rank, row.step, name, 0, "output", "")
                for name in anchor_feeds(row.module, self._layers, self._present, parallel)]

    def identity_checks(self) -> list:
        """All checked identities of both runs (for reports)."""
        out = []
        for side in self.sides.values():
            out.extend(check_identities(side.index, side.set))
        return out

    # -- items --------------------------------------------------------------------------
    def items(self, run: Run, side: str) -> Iterator[Item]:
        if side not in self.sides or self.sides[side].run is not run:
            # The floor run (or any third run) of the same engine as A or B.
            which = "a" if engine_name(run) == self.sides["a"].engine else "b"
            yield from _FloorSide(run, self, which).items()
            return
        if side == "a":
            yield from self._items_a()
        else:
            yield from self._items_b()

    def _items_a(self) -> Iterator[Item]:
        a = self.sides["a"]
        for (step, anchor), keys in sorted(self._plan.items(), key=lambda kv: (kv[0][0], anchor_order_key(kv[0][1]))):
            expr = a.set.points[(step, anchor)]
            yield self._item(a, anchor, step, expr, lambda e=expr, s=step, k=keys: self._load_a(e, s, k),
                             len(keys), a.features(step, expr), keys)

    def _items_b(self) -> Iterator[Item]:
        b = self.sides["b"]
        for (step, anchor), keys in sorted(self._plan.items(), key=lambda kv: (kv[0][0], anchor_order_key(kv[0][1]))):
            where = self._where[anchor]
            first_step = where[keys[0]]
            expr = b.set.points[(first_step, anchor)]
            yield self._item(b, anchor, step, expr, lambda a_=anchor, k=keys: self._load_b(a_, k),
                             len(keys), b.features(first_step, expr), keys)

    def _item(self, side: _Side, anchor: str, step: int, expr: AnchorExpr, loader, n: int, feat: int,
              keys: list[TokenKey] | None = None) -> Item:
        last = max((side.index.get(step, t) for t in expr.terms if side.index.get(step, t) is not None),
                   key=lambda r: r.seq, default=None)
        first = side.index.get(step, expr.terms[0])
        rec = Record(step=step, module=expr.describe(), call=0, role="output", path="",
                     seq=last.seq if last else 0, kind="tensor", rank=0,
                     dtype=first.dtype if first else None, shape=(n, feat),
                     extra={"anchor": anchor, "engine": side.engine, "raw": expr.describe()})
        return Item((0, step, anchor, 0, "output", ""), rec, loader=loader,
                    row_keys=tuple(keys) if keys is not None else None)

    def _load_a(self, expr: AnchorExpr, step: int, keys: list[TokenKey]) -> torch.Tensor:
        a = self.sides["a"]
        t = evaluate(a.index, step, expr)
        rows = a.rows(step, expr)
        mat = t.reshape(len(rows), -1)
        pos = {k: i for i, k in enumerate(rows) if k is not None}
        return mat.index_select(0, torch.tensor([pos[k] for k in keys], dtype=torch.long))

    def _load_b(self, anchor: str, keys: list[TokenKey]) -> torch.Tensor:
        b = self.sides["b"]
        where = self._where[anchor]
        by_step: dict[int, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            by_step[where[k]].append(i)
        out = None
        for step, idxs in by_step.items():
            expr = b.set.points[(step, anchor)]
            t = evaluate(b.index, step, expr)
            rows = b.rows(step, expr)
            mat = t.reshape(len(rows), -1)
            pos = {k: i for i, k in enumerate(rows) if k is not None}
            sel = mat.index_select(0, torch.tensor([pos[keys[i]] for i in idxs], dtype=torch.long))
            if out is None:
                out = torch.empty((len(keys), mat.shape[1]), dtype=mat.dtype)
            out[torch.tensor(idxs, dtype=torch.long)] = sel
        return out


def _absent(side: "_Side") -> str:
    """Why a side lacks anchors: its capture filtered them out, or its engine has none."""
    cap = side.run.info.get("capture") if isinstance(side.run.info, dict) else None
    filtered = isinstance(cap, dict) and (cap.get("modules") or cap.get("layers") is not None
                                          or cap.get("roles") not in (None, ["inputs", "outputs"]))
    return "not captured (the run's --modules/--layers/--roles filter)" if filtered else "not available"


class _FloorSide:
    """A third run (noise floor) mapped like the side of its engine, on A's token plan."""

    def __init__(self, run: Run, mapping: AnchorMapping, like: str) -> None:
        self.side = _Side(run)
        self.mapping = mapping

    def items(self) -> Iterator[Item]:
        m = self.mapping
        for (step, anchor), keys in m._plan.items():
            expr = self.side.set.points.get((step, anchor))
            if expr is None:
                continue
            rows = self.side.rows(step, expr)
            if rows is None or any(k not in set(rows) for k in keys):
                continue

            def load(e=expr, s=step, k=keys) -> torch.Tensor:
                t = evaluate(self.side.index, s, e)
                r = self.side.rows(s, e)
                mat = t.reshape(len(r), -1)
                pos = {kk: i for i, kk in enumerate(r) if kk is not None}
                return mat.index_select(0, torch.tensor([pos[kk] for kk in k], dtype=torch.long))

            yield m._item(self.side, anchor, step, expr, load, len(keys), self.side.features(step, expr))
