"""``tt.diff``: compare two runs record by record and find the first divergence."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from tensortap.compare.checks import gaps, preflight
from tensortap.compare.judge import judge
from tensortap.compare.noise import GAIN
from tensortap.compare.mapping import Item, Mapping, resolve_mapping
from tensortap.compare.pair import PairContext, compare_pair, stored_identical
from tensortap.compare.ranking import growth_entry, top_growth
from tensortap.compare.tokentext import token_info
from tensortap.compare.pairing import Pairing, Unmatched, only_filter, pair_items
from tensortap.compare.result import DiffReport, DiffRow, Divergence
from tensortap.compare.tolerance import Override, TolerancePolicy
from tensortap.errors import TensortapError, one_line
from tensortap.store.importers.detect import open_any
from tensortap.store.readahead import Range, ReadAhead
from tensortap.store.reader import Run

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called after each compared pair."""


def _open(run: str | Path | Run, what: str) -> Run:
    if isinstance(run, Run):
        return run
    if not isinstance(run, (str, Path)):
        raise TensortapError(f"{what}: expected a run directory or a Run, got {type(run).__name__}")
    # Other tools' dumps (vLLM, SGLang, transformers debugger) open as Runs too (auto-detected).
    return open_any(run)


def diff(
    a: str | Path | Run,
    b: str | Path | Run,
    *,
    mapping: Any = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Iterable[Override | str] | dict[str, Any] | None = None,
    only: str | None = None,
    strict: bool = False,
    floor: str | Path | Run | None = None,
    force: bool = False,
    read_all: bool = False,
    progress: Progress | None = None,
    top: int = 10,
    top_per: str = "overall",
) -> DiffReport:
    """Compare run ``b`` against run ``a`` (the reference) and report where they part ways.

    Args:
        a, b: run directories or ``tt.open`` Runs.
        mapping: ``"auto"`` (same engine: raw names), ``"none"``, a rename-rules file (YAML/JSON),
            rules as a dict ``{regex: replacement}`` / list, or a Mapping (see compare/mapping.py).
        atol, rtol: override the dtype-aware default tolerance for every floating pair.
        tolerances: per-module overrides, ``{regex: {"rtol": x, "atol": y}}`` or ``"REGEX:rtol=x"`` specs;
            the first matching regex wins over atol/rtol.
        only: compare only modules whose (mapped) name matches this regex.
        strict: records that only one run has count as a divergence.
        floor: a third run (e.g. the reference rerun in another dtype) giving each pair a noise
            floor: a pair diverges when ``||a-b|| > k*||a-c|| + tolerance/10`` (docs/diff.md).
        force: compare runs of different models or prompts instead of refusing.
        read_all: read every pair's data, even where the stored checksums and statistics
            show it identical (by default such pairs are reported identical unread); this
            also verifies the checksum of every tensor compared.
        progress: callback ``(done, total)`` after each pair.
        top, top_per: how many outputs ``top_growth`` ranks by error growth, and whether
            one entry per module (``"overall"``) or per step and module (``"step"``).

    Returns:
        A DiffReport: ``rows`` (execution order of ``a``), ``first_divergence``, ``unmatched``,
        ``verdict`` (agree / diverged / inconclusive) and ``exit_code`` (0 / 1 / 2).

    Raises:
        TensortapError: unreadable runs, different models or prompts (without ``force``), no
        common records, invalid rules or regexes.
    """
    run_a, run_b = _open(a, "run A"), _open(b, "run B")
    run_c = _open(floor, "floor run") if floor is not None else None
    policy = TolerancePolicy(atol=atol, rtol=rtol, overrides=tolerances)
    keep = only_filter(only)
    warnings = preflight(run_a, run_b, run_c, force)
    same = [f"{what} is run A itself" for what, r in (("run B", run_b), ("the floor run", run_c))
            if r is not None and _same_dir(run_a, r)]
    if same:
        warnings += [f"{s} ({run_a.path}): the comparison cannot find anything" for s in same]
    mapper: Mapping = resolve_mapping(mapping, run_a, run_b)
    items_a = [i for i in mapper.items(run_a, "a") if keep(i)]
    items_b = [i for i in mapper.items(run_b, "b") if keep(i)]
    pairing = pair_items(items_a, items_b)
    _check_pairs(pairing, run_a, run_b, only, getattr(mapper, "name", type(mapper).__name__))
    floor_items: dict[tuple, Item] = {}
    if run_c is not None:
        for it in sorted((i for i in mapper.items(run_c, "floor") if keep(i)), key=lambda i: i.order):
            floor_items.setdefault(it.key, it)
    ctx = PairContext(run_a, run_b, run_c, policy, read_all=read_all)
    rows: list[DiffRow] = []
    total = len(pairing.pairs)
    ahead = ReadAhead(_ranges_read(pairing, floor_items, ctx))
    try:
        for n, (ia, ib) in enumerate(pairing.pairs):
            ahead.reached(n)
            rows.append(compare_pair(n, ia, ib, floor_items.get(ia.key), ctx))
            if progress is not None:
                progress(n + 1, total)
    finally:
        ahead.close()
        ctx.loader.close(*(r for r in (run_a, run_b, run_c) if r is not None))
    judge(rows, getattr(mapper, "feeds", None))
    if run_c is not None and ctx.floor_missing:
        warnings.append(f"floor run has no usable record for {ctx.floor_missing} pair(s): plain tolerance used there")
    mapping_desc = {"map": mapping if isinstance(mapping, str) else str(mapping) if isinstance(mapping, Path)
                    else type(mapping).__name__, "resolved": getattr(mapper, "name", type(mapper).__name__)}
    notes = getattr(mapper, "notes", None)
    if isinstance(notes, list):  # an anchor adapter's findings (identities, missing anchors)
        warnings += [str(n) for n in notes]
    rep = _report(run_a, run_b, run_c, rows, pairing, warnings, strict, policy, mapping_desc, only, ctx)
    rep.top_growth = [growth_entry(r) for r in top_growth(rows, top, top_per)]
    fd = rep.first_divergence
    if fd is not None and fd.row is not None:
        key = rows[fd.row].worst_token_key
        if key is not None:
            fd.token = token_info(run_a, fd.step, fd.rank, key) or {
                "request": key[0], "position": key[1], "token_id": None, "text": None}
    return rep


def _same_dir(a: Run, b: Run) -> bool:
    try:
        return Path(a.path).resolve() == Path(b.path).resolve()
    except OSError:
        return False


def _ranges_read(pairing: Pairing, floor_items: dict[tuple, Item], ctx: PairContext) -> list[list[Range]]:
    """For each pair, the file ranges comparing it will read (to read them ahead)."""
    seen: set[Range] = set()
    groups: list[list[Range]] = []
    for ia, ib in pairing.pairs:
        group: list[Range] = []
        sides = [(ctx.run_a, ia), (ctx.run_b, ib)]
        ic = floor_items.get(ia.key)
        if ctx.run_c is not None and ic is not None:
            sides.append((ctx.run_c, ic))
        if (all(it.loader is None and it.record.has_data for _, it in sides[:2])
                and not stored_identical(ia, ib, ctx)):
            for run, it in sides:
                for r in run.data_range(it.record):
                    if r not in seen:  # records that share a stored tensor read it once
                        seen.add(r)
                        group.append(r)
        groups.append(group)
    return groups


def _check_pairs(pairing: Pairing, run_a: Run, run_b: Run, only: str | None, tried: str = "none") -> None:
    if pairing.pairs:
        return
    if only and (pairing.count_a == 0 or pairing.count_b == 0):
        raise TensortapError(f"no records match --only {only!r} in run {'A' if pairing.count_a == 0 else 'B'}")
    if pairing.count_a == 0 or pairing.count_b == 0:
        empty = run_a if pairing.count_a == 0 else run_b
        raise TensortapError(f"{empty.path}: run has no records to compare (mapping tried: {tried})"
                             + (f" (status {empty.status}: {one_line(empty.reason or '', 200)})"
                                if empty.status != "complete" else ""))
    ma = sorted({u.module for u in pairing.unmatched if u.side == "a"})[:3]
    mb = sorted({u.module for u in pairing.unmatched if u.side == "b"})[:3]
    raise TensortapError(
        f"no common records: run A has {pairing.count_a} (modules such as {', '.join(map(repr, ma))}), "
        f"run B has {pairing.count_b} (such as {', '.join(map(repr, mb))}) under mapping {tried!r}; "
        "if the names differ, pass --map FILE with rename rules")


def _first_divergence(rows: list[DiffRow], unmatched: list[Unmatched], strict: bool) -> Divergence | None:
    for r in rows:
        if not r.failed:
            continue
        if r.tripped == "token_rel_l2":
            value, limit = r.token_rel_l2, r.limit
        elif r.tripped == "rel_l2":
            value, limit = r.rel_l2, r.limit
        elif r.tripped == "nan_inf":
            value, limit = (r.nan_mismatch or 0) + (r.inf_mismatch or 0), 0
        elif r.tripped == "exact":
            value, limit = r.allclose_fail_frac, 0
        else:
            value, limit = r.reason, None
        msg = _divergence_message(r)
        return Divergence(r.module, r.step, r.call, r.role, r.path, r.rank, r.seq_a, r.status,
                          r.tripped or r.status, value, limit, r.origin, r.amplification, r.index,
                          r.estimated, msg)
    if strict and unmatched:
        u = min((u for u in unmatched if u.side == "a"), key=lambda u: (u.rank, u.seq), default=None) \
            or min(unmatched, key=lambda u: (u.rank, u.seq))
        return Divergence(u.module, u.step, u.call, u.role, u.path, u.rank, u.seq, "unmatched", "unmatched",
                          f"only in run {u.side.upper()}", None, message=f"{_name(u)} is only in run "
                          f"{u.side.upper()} ({u.reason}) and --strict is on")
    return None


def _name(x) -> str:
    p = f".{x.path}" if x.path else ""
    return one_line(f"{x.module or '<root>'}[{x.call}].{x.role}{p}@{x.step}", 300)


def _divergence_message(r: DiffRow) -> str:
    where = f"{_name(r)}"
    if r.tripped == "token_rel_l2":
        what = (f"{_worst_where(r)} relative error {r.token_rel_l2:.3g} > limit {r.limit:.3g} "
                f"({_limit_terms(r)})")
    elif r.tripped == "rel_l2":
        what = f"rel_l2 {r.rel_l2:.3g} > limit {r.limit:.3g}" if r.limit is not None and r.rel_l2 is not None \
            else "error beyond tolerance"
        if r.floor_rel_l2 is not None:
            what += f" (floor rel_l2 {r.floor_rel_l2:.3g}, k={r.floor_k:g})"
    elif r.tripped == "nan_inf":
        what = f"NaN/Inf disagree at {(r.nan_mismatch or 0) + (r.inf_mismatch or 0)} element(s)"
    elif r.tripped == "exact":
        what = f"integer data differ ({r.reason})"
    else:
        what = one_line(r.reason or r.status, 200)
    origin = {
        "introduced": "introduced here (beyond what its inputs carry and its dtype explains)",
        "amplified": f"amplified {r.amplification:.3g}x from its inputs" if r.amplification else "amplified",
        "carried": "carried in from its inputs (token ids or positions differ)",
        "unknown": "inputs not captured",
    }.get(r.origin or "", "")
    est = " [estimated]" if r.estimated else ""
    if r.raw_a or r.raw_b:
        where += f" ({'; '.join(x for x in (r.raw_a, r.raw_b) if x)})"
    return f"{where}: {what}{est}" + (f"; {origin}" if origin else "")


def _worst_where(r: DiffRow) -> str:
    """``token (request 1, position 3)`` or ``row 7`` for the worst row of a pair."""
    key = r.worst_token_key
    if key is not None:
        return f"token (request {key[0]}, position {key[1]})"
    return f"row {r.worst_row[0]}" if r.worst_row else "tensor"


def _limit_terms(r: DiffRow) -> str:
    """What the limit is made of, as the noise model derives it (docs/diff.md)."""
    own = f"own rounding {r.own_noise:.2g}" if r.own_noise is not None else "own rounding"
    if r.carried:
        return f"{GAIN:g} x carried {r.carried:.2g} from {r.carried_from} + {own}"
    return f"{own}; its inputs agree exactly" if r.carried_from == "inputs" else own


def _report(run_a: Run, run_b: Run, run_c: Run | None, rows: list[DiffRow], pairing: Pairing,
            warnings: list[str], strict: bool, policy: TolerancePolicy, mapping: dict[str, str],
            only: str | None, ctx: PairContext) -> DiffReport:
    counts = Counter(r.status for r in rows)
    stats = {s: counts.get(s, 0) for s in ("ok", "diverged", "mismatch", "error")}
    stats["pairs"] = len(rows)
    stats["unmatched_a"] = sum(u.side == "a" for u in pairing.unmatched)
    stats["unmatched_b"] = sum(u.side == "b" for u in pairing.unmatched)
    stats["estimated"] = sum(r.estimated for r in rows)
    first = _first_divergence(rows, pairing.unmatched, strict)
    incomplete = gaps({"A": run_a, "B": run_b})  # an incomplete floor only weakens the floor
    n_unmatched = len(pairing.unmatched)
    if first is not None:
        verdict = "diverged"
        bad = stats["diverged"] + stats["mismatch"]
        line = f"DIVERGED at {first.message}. {bad} of {len(rows)} pairs beyond tolerance"
        if strict and n_unmatched:
            line += f"; {n_unmatched} unmatched record(s) (--strict)"
    elif stats["error"] or incomplete:
        verdict = "inconclusive"
        parts = []
        if stats["error"]:
            parts.append(f"{stats['error']} pair(s) could not be read")
        parts += incomplete
        line = (f"INCONCLUSIVE: no divergence in {len(rows) - stats['error']} compared pair(s), but "
                + "; ".join(dict.fromkeys(parts)))
    else:
        verdict = "agree"
        identical = all(r.rel_l2 == 0 if r.kind != "value" else True for r in rows)
        line = f"AGREE: all {len(rows)} pairs " + ("identical" if identical else "within tolerance")
    if verdict != "diverged" and n_unmatched:
        line += f"; {n_unmatched} record(s) only in one run were not compared (--strict makes that a failure)"
    if stats["estimated"]:
        line += f"; {stats['estimated']} pair(s) estimated from statistics"
    settings = {
        "mapping": mapping,
        "only": only, "strict": strict, "tolerance": policy.describe(), "read_all": ctx.read_all,
    }
    return DiffReport(
        run_a=str(run_a.path), run_b=str(run_b.path), floor=str(run_c.path) if run_c else None,
        rows=rows, unmatched=pairing.unmatched, first_divergence=first, verdict=verdict,
        summary_line=line, warnings=warnings, settings=settings, counts=stats,
        steps=sorted({r.step for r in rows}), peak_loaded_bytes=ctx.loader.peak,
    )
