"""Comparing one pair of records: load, align, measure, and decide its status."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from tensortap.compare.align import Aligned, RowPlan, align, row_plan
from tensortap.compare.estimate import estimate
from tensortap.compare.loader import TensorLoader
from tensortap.compare.mapping import Item
from tensortap.compare.metrics import PairMetrics, norm_of_difference, pair_metrics
from tensortap.compare.result import DiffRow
from tensortap.compare.rows import RowErrors, row_errors
from tensortap.compare.tolerance import Tolerance, TolerancePolicy, coarser_dtype, dtype_category, floor_bound
from tensortap.errors import RunFormatError, one_line
from tensortap.integrations.registry import logits_module_pattern
from tensortap.store.reader import Run
from tensortap.store.sketch import sketch

# Outputs of the engines' logits modules (integrations/registry.py), or a return field
# named ``logits``, are treated as logits: top-1 agreement and KL on top of the metrics.
LOGITS_PATH = re.compile(r"(^|\.)logits$")


def is_logits(module: str, role: str, path: str, shape: tuple[int, ...] | None) -> bool:
    if role != "output" or not shape or len(shape) < 2 or shape[-1] < 2:
        return False
    return bool(logits_module_pattern().search(module) or LOGITS_PATH.search(path))


@dataclass
class PairContext:
    """What every pair comparison of one diff shares."""

    run_a: Run
    run_b: Run
    run_c: Run | None
    policy: TolerancePolicy
    read_all: bool = False
    """Read every pair's data, even pairs ``stored_identical`` shows equal."""
    loader: TensorLoader = field(default_factory=TensorLoader)
    _plans: dict[tuple[str, int, int], RowPlan | None] = field(default_factory=dict)
    floor_missing: int = 0
    _measured: dict[tuple, "_Measured"] = field(default_factory=dict)
    _measured_step: tuple[int, int] | None = None

    def plan(self, other: str, rank: int, step: int) -> RowPlan | None:
        """Token-row alignment of run A with run B (``other='b'``) or the floor run (``'c'``)."""
        key = (other, rank, step)
        if key not in self._plans:
            run_o = self.run_b if other == "b" else self.run_c
            self._plans[key] = row_plan(self.run_a.tokens(step, rank),
                                        run_o.tokens(step, rank) if run_o is not None else None)
        return self._plans[key]

    def measured(self, key: tuple | None) -> "_Measured | None":
        """An earlier pair's measurement of the same stored data, if any."""
        return self._measured.get(key) if key is not None else None

    def remember(self, key: tuple | None, got: "_Measured") -> None:
        if key is None:
            return
        # A capture shares stored tensors within a step only: keep one step's results.
        if key[:2] != self._measured_step:
            self._measured.clear()
            self._measured_step = key[:2]
        self._measured[key] = got


def _base_row(index: int, ia: Item, ib: Item) -> DiffRow:
    ra, rb = ia.record, ib.record
    return DiffRow(
        index=index, rank=ia.rank, step=ia.step, module=ia.module, call=ia.call, role=ia.role,
        path=ia.path, seq_a=ra.seq, seq_b=rb.seq, module_b=rb.module, path_b=rb.path,
        kind="tensor", dtype_a=ra.dtype, dtype_b=rb.dtype,
        shape_a=list(ra.shape) if ra.shape is not None else None,
        shape_b=list(rb.shape) if rb.shape is not None else None,
        raw_a=_raw(ra, ia), raw_b=_raw(rb, ib),
    )


def _raw(rec, item: Item) -> str | None:
    """The engine's own name when the item is not the raw record (renamed or an anchor)."""
    raw = (rec.extra or {}).get("raw") if isinstance(rec.extra, dict) else None
    if raw:
        engine = rec.extra.get("engine")
        return f"{engine}: {raw}" if engine else str(raw)
    if (rec.module, rec.path) != (item.module, item.path):
        return f"{rec.module}{'.' + rec.path if rec.path else ''}"
    return None


def _short(v) -> str:
    return one_line(repr(v), 80)


def compare_pair(index: int, ia: Item, ib: Item, ic: Item | None, ctx: PairContext) -> DiffRow:
    """One DiffRow; never raises for bad data (the row says ``error`` and why)."""
    row = _base_row(index, ia, ib)
    ra, rb = ia.record, ib.record
    if ra.kind == "value" or rb.kind == "value":
        row.kind = "value"
        if ra.kind != rb.kind:
            return _fail(row, "mismatch", "kind", f"a {ra.kind} in A, a {rb.kind} in B")
        if ra.value == rb.value:
            return row
        return _fail(row, "diverged", "value", f"value {_short(ra.value)} vs {_short(rb.value)}")
    cat_a, cat_b = dtype_category(ra.dtype), dtype_category(rb.dtype)
    if cat_a != cat_b:
        return _fail(row, "mismatch", "dtype", f"dtype {ra.dtype} vs {rb.dtype}")
    tol = ctx.policy.for_pair(ia.module, ra.dtype, rb.dtype)
    row.atol, row.rtol, row.tol_source = tol.atol, tol.rtol, tol.source
    row.is_logits = cat_a == "float" and is_logits(ia.module, ia.role, ia.path, ra.shape)
    try:
        if (ia.loader or ra.has_data) and (ib.loader or rb.has_data):
            return _compare_data(row, ia, ib, ic, tol, ctx)
        return _compare_estimate(row, ia, ib, ic, tol, ctx)
    except RunFormatError as e:  # includes CorruptRecordError
        return _fail(row, "error", None, one_line(str(e), 500))


def _fail(row: DiffRow, status: str, tripped: str | None, reason: str) -> DiffRow:
    row.status, row.tripped, row.reason = status, tripped, reason
    return row


@dataclass
class _Measured:
    """What one pair's data gave, before the tolerance rule: reusable by every pair of
    records that store the same two tensors (a capture stores an unchanged tensor once
    and points several records at it, e.g. a layer's output and the next one's input)."""

    how: str | None = None
    note: str | None = None
    mismatch: str | None = None
    """Why the tensors cannot be compared (shapes), when they cannot."""
    metrics: PairMetrics | None = None
    worst_index: list[int] | None = None
    worst_token: list[int] | None = None
    err_floor: float | None = None
    rows: RowErrors | None = None
    """Per-token errors (None for an identical pair: every row's error is 0)."""


def _data_key(ia: Item, ib: Item, ic: Item | None, tol: Tolerance, is_logits: bool) -> tuple | None:
    """Identifies a pair's stored data and everything its measurement depends on; None
    when a tensor is not simply a stored record (an adapter's loader builds it)."""
    items = (ia, ib) if ic is None else (ia, ib, ic)
    if any(i.loader or i.record.shard is None or i.record.tensor is None for i in items):
        return None
    ra, rb = ia.record, ib.record
    c = (ic.record.rank, ic.record.shard, ic.record.tensor) if ic is not None else None
    return (ia.rank, ia.step, ra.rank, ra.shard, ra.tensor, rb.rank, rb.shard, rb.tensor, c,
            tol.atol, tol.rtol, is_logits)


def _compare_data(row: DiffRow, ia: Item, ib: Item, ic: Item | None, tol: Tolerance,
                  ctx: PairContext) -> DiffRow:
    use_floor = (ic is not None and ctx.run_c is not None and (ic.loader or ic.record.has_data)
                 and dtype_category(ic.record.dtype) == dtype_category(ia.record.dtype))
    if ctx.run_c is not None and not use_floor:
        ctx.floor_missing += 1
    key = _data_key(ia, ib, ic if use_floor else None, tol, row.is_logits)
    got = ctx.measured(key)
    if got is None:
        got = _measure(ia, ib, ic if use_floor else None, tol, row.is_logits, ctx)
        ctx.remember(key, got)
    if got.how is not None:
        row.aligned = got.how
    if got.note:
        row.reason = got.note
    if got.mismatch is not None:
        return _fail(row, "mismatch", "shape", got.mismatch)
    m = got.metrics
    _fill(row, m)
    row.worst_index, row.worst_token = got.worst_index, got.worst_token
    row.row_errors = got.rows
    dtype = coarser_dtype(row.dtype_a or "float32", row.dtype_b or "float32") \
        if dtype_category(row.dtype_a) == "float" else "int64"
    return _decide(row, m, tol, got.err_floor, dtype)


def stored_identical(ia: Item, ib: Item, ctx: PairContext) -> bool:
    """Whether the manifests alone show that the pair's data are identical.

    Both records store a tensor of the same dtype and shape whose checksums (CRC32 of
    the stored bytes, computed at capture) and float64 statistics agree, with no NaN/Inf,
    and they are compared whole (no token rows selected) without a floor run. A
    difference that kept the CRC32 and every statistic equal would go unseen: for
    tensors that differ, the CRC32 alone agrees once in 4e9. Such a pair's data need not
    be read, which is most of a diff's I/O when two runs part ways late (bench/NOTES.md).
    """
    if ctx.read_all or ia.loader or ib.loader or ctx.run_c is not None:
        return False
    ra, rb = ia.record, ib.record
    sa = ra.stats
    if not (ra.has_data and rb.has_data and ra.checksum and ra.checksum == rb.checksum
            and ra.dtype == rb.dtype and ra.shape is not None and ra.shape == rb.shape
            and sa is not None and sa == rb.stats and sa.l2 is not None and sa.numel > 0
            and not sa.nan and not sa.inf):
        return False
    plan = ctx.plan("b", ia.rank, ia.step)
    return plan is None or plan.identity


def _identical_from_manifest(ia: Item, ctx: PairContext, is_logits: bool) -> _Measured:
    """The metrics ``pair_metrics`` gives an equal pair, from A's statistics."""
    st = ia.record.stats
    m = PairMetrics(numel=st.numel, norm_a=st.l2, norm_b=st.l2, dot=st.l2 * st.l2, worst_flat=0)
    # The worst element of an equal pair is the first (as the full walk reports): one page.
    first = ctx.run_a.load(ia.record, verify=False).reshape(-1)[0]
    m.worst_a = m.worst_b = first.item() if first.is_floating_point() else int(first)
    if is_logits:
        m.top1_agree, m.kl = 1.0, 0.0  # equal finite rows
    return _Measured(how="same", metrics=m)


def _measure(ia: Item, ib: Item, ic: Item | None, tol: Tolerance, is_logits: bool,
             ctx: PairContext) -> _Measured:
    """Load the pair (and the floor run's record), align, and compute the metrics."""
    if ic is None and stored_identical(ia, ib, ctx):
        return _identical_from_manifest(ia, ctx, is_logits)
    ld = ctx.loader
    out = _Measured()
    a = ld.load(ctx.run_a, ia)
    b = c = None
    try:
        # The floor's error first, so that at most two tensors are held at once.
        if ic is not None:
            c = ld.load(ctx.run_c, ic)
            al_c = align(a, c, None if ia.loader or ic.loader else ctx.plan("c", ia.rank, ia.step))
            if isinstance(al_c, Aligned):
                out.err_floor = norm_of_difference(al_c.a, al_c.b)
            del al_c
            ld.release(c)
            c = None
        b = ld.load(ctx.run_b, ib)
        # Items built by an adapter (loader set) arrive with their rows already lined up.
        al = align(a, b, None if ia.loader or ib.loader else ctx.plan("b", ia.rank, ia.step))
        if isinstance(al, str):
            out.mismatch = al
            return out
        out.how = al.how
        if al.plan is not None and al.plan.note and al.how == "tokens":
            out.note = al.plan.note
        if al.a.numel() == 0 and (a.numel() or b.numel()):
            out.mismatch = "no tokens in common"
            return out
        m = out.metrics = pair_metrics(al.a, al.b, tol.atol, tol.rtol, logits=is_logits,
                                       maybe_equal=_maybe_equal(ia, ib, al))
        if m.err > 0:
            out.rows = row_errors(al, list(ia.row_keys) if ia.loader and ia.row_keys else None,
                                  finite=_finite_data(ia, ib))
        if m.worst_flat is not None and m.max_abs > 0:
            idx, token = al.locate(m.worst_flat)
            out.worst_index = idx
            out.worst_token = list(token) if token is not None else None
        return out
    finally:
        ld.release(a, b, c)


def _finite_data(ia: Item, ib: Item) -> bool:
    """Whether both records' stored statistics show no NaN/Inf (adapter-built items: unknown)."""
    sa, sb = ia.record.stats, ib.record.stats
    return (not ia.loader and not ib.loader and sa is not None and sb is not None
            and not (sa.nan or sa.inf or sb.nan or sb.inf))


def _maybe_equal(ia: Item, ib: Item, al: Aligned) -> bool:
    """False when the stored checksums prove the compared tensors differ: the metrics then
    skip their equality test. Only whole tensors count (token alignment selects rows)."""
    if ia.loader or ib.loader or al.how not in ("same", "squeezed"):
        return True
    ra, rb = ia.record, ib.record
    return not (ra.checksum and rb.checksum and ra.dtype == rb.dtype and ra.checksum != rb.checksum)


def _compare_estimate(row: DiffRow, ia: Item, ib: Item, ic: Item | None, tol: Tolerance,
                      ctx: PairContext) -> DiffRow:
    ra, rb = ia.record, ib.record
    row.kind, row.estimated = "estimate", True
    if ra.shape is not None and rb.shape is not None and ra.shape != rb.shape:
        if _strip(ra.shape) != _strip(rb.shape):
            return _fail(row, "mismatch", "shape", f"shape {list(ra.shape)} vs {list(rb.shape)}")
    if ra.stats is None or rb.stats is None:
        return _fail(row, "error", None, "no tensor data and no statistics to compare")
    sk_a, sk_b = ra.sketch, rb.sketch
    # One side has data, the other a sketch: sketch the data the same way.
    if sk_a is None and sk_b is not None and ra.has_data:
        sk_a = _sketch_of(ctx, ctx.run_a, ia, len(sk_b))
    if sk_b is None and sk_a is not None and rb.has_data:
        sk_b = _sketch_of(ctx, ctx.run_b, ib, len(sk_a))
    est = estimate(ra.stats, rb.stats, sk_a, sk_b)
    m = est.metrics
    _fill(row, m)
    row.cosine = m.cosine if est.method == "sketch" else None
    row.allclose_fail_frac = None
    row.reason = ("estimated from sketches (about ±12 %)" if est.method == "sketch"
                  else "statistics only: rel_l2 and max_abs are lower bounds")
    err_floor = None
    if ic is not None and ic.record.sketch is not None and sk_a is not None and ic.record.stats is not None:
        err_floor = estimate(ra.stats, ic.record.stats, sk_a, ic.record.sketch).metrics.err
    dtype = coarser_dtype(row.dtype_a or "float32", row.dtype_b or "float32") \
        if dtype_category(row.dtype_a) == "float" else "int64"
    return _decide(row, m, tol, err_floor, dtype)


def _sketch_of(ctx: PairContext, run: Run, item: Item, dim: int) -> tuple[float, ...]:
    t = ctx.loader.load(run, item)
    try:
        return sketch(t, dim)
    finally:
        ctx.loader.release(t)


def _strip(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def _fill(row: DiffRow, m: PairMetrics) -> None:
    row.numel = m.numel
    row.max_abs, row.mean_abs = m.max_abs, m.mean_abs
    row.rel_l2, row.cosine, row.rel_diff, row.sqnr_db = m.rel_l2, m.cosine, m.rel_diff, m.sqnr_db
    row.allclose_fail_frac = m.fail_frac
    row.nan_mismatch, row.inf_mismatch = m.nan_mismatch, m.inf_mismatch
    row.worst_a, row.worst_b = m.worst_a, m.worst_b
    row.top1_agree, row.kl = m.top1_agree, m.kl


def _decide(row: DiffRow, m: PairMetrics, tol: Tolerance, err_floor: float | None, dtype: str) -> DiffRow:
    """Integer data must be equal and NaN/Inf positions agree; with a floor run, the floor
    rule decides (docs/diff.md). Other floating pairs are left to compare.judge."""
    if tol.exact:
        row.limit, row.ratio = 0.0, (0.0 if m.err == 0 else math.inf)
        if m.err > 0 or m.nan_mismatch or m.inf_mismatch:
            why = f"{m.fail_frac:.3g} of elements differ" + (f"; {row.reason}" if row.reason else "")
            return _fail(row, "diverged", "exact", why)
        return row
    if m.nan_mismatch or m.inf_mismatch:
        row.status, row.tripped = "diverged", "nan_inf"
    if err_floor is None:
        return row  # compare.judge decides with the noise model once every pair is measured
    bound, k = floor_bound(err_floor, tol, dtype, m.numel, m.norm_a)
    row.floor_k = k
    row.floor_rel_l2 = err_floor / m.norm_a if m.norm_a > 0 else (0.0 if err_floor == 0 else math.inf)
    row.limit = bound / m.norm_a if m.norm_a > 0 else math.inf
    row.ratio = m.err / bound if bound > 0 else (0.0 if m.err == 0 else math.inf)
    if row.status != "diverged" and m.err > bound:
        row.status, row.tripped = "diverged", "rel_l2"
    return row
