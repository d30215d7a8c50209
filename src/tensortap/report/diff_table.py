"""The terminal view of a diff: a rich table in execution order, the verdict, a progress bar."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tensortap.compare.result import DiffReport, DiffRow
from tensortap.errors import one_line
from tensortap.report.records import fmt_num

STATUS_STYLE = {"ok": "green", "diverged": "bold red", "mismatch": "magenta", "error": "yellow"}
VERDICT_STYLE = {"agree": "bold green", "diverged": "bold red", "inconclusive": "bold yellow"}
PROGRESS_MIN_PAIRS = 200


def select_rows(report: DiffReport, limit: int = 30, context: int = 3, show_all: bool = False) -> list[DiffRow]:
    """The interesting part, in execution order.

    With a divergence: a few agreeing rows before it, the first divergence, then the rows
    after it that failed. Without: failed/unreadable rows and the rows closest to their
    tolerance. ``show_all`` returns every row. ``limit`` only sizes the "closest" pick; cut
    the list for display with ``limit_rows``.
    """
    rows = report.rows
    if show_all:
        return list(rows)
    tensors = [r for r in rows if r.kind != "value" or r.status != "ok"]
    fd = report.first_divergence
    if fd is not None and fd.row is not None:
        before = [r for r in tensors if r.index < fd.row][-context:] if context > 0 else []
        after = [r for r in tensors if r.index >= fd.row and (r.status != "ok" or r.index == fd.row)]
        picked = before + after
    else:
        bad = [r for r in tensors if r.status != "ok"]
        close = sorted((r for r in tensors if r.status == "ok" and r.ratio),
                       key=lambda r: -(r.ratio or 0))[:max(5, limit // 3 if limit > 0 else 10)]
        picked = sorted({r.index: r for r in bad + close}.values(), key=lambda r: r.index)
    return picked


def limit_rows(rows: list[DiffRow], limit: int, keep: int | None = None) -> tuple[list[DiffRow], int]:
    """At most ``limit`` rows (0: all) and how many were left out. The row with index
    ``keep`` (the first divergence) is always among them, with what little context fits."""
    if limit <= 0 or len(rows) <= limit:
        return rows, 0
    start = 0
    pos = next((i for i, r in enumerate(rows) if r.index == keep), None) if keep is not None else None
    if pos is not None and pos >= limit:
        start = max(0, pos - min(3, limit - 1))
    return rows[start:start + limit], len(rows) - limit


def _name(r: DiffRow) -> str:
    call = f"[{r.call}]" if r.call else ""
    return one_line((r.module or "<root>") + call, 200)


def _where(r: DiffRow) -> str:
    return one_line(r.role + (f".{r.path}" if r.path else ""), 120)


def _dtype(r: DiffRow) -> str:
    if r.dtype_a == r.dtype_b:
        return r.dtype_a or "-"
    return f"{r.dtype_a}→{r.dtype_b}"


def _shape(r: DiffRow) -> str:
    if r.kind == "value":
        return "value"
    s = "x".join(map(str, r.shape_a)) if r.shape_a is not None else "-"
    if r.shape_b is not None and r.shape_b != r.shape_a:
        s += " / " + "x".join(map(str, r.shape_b))
    return s


def _status(r: DiffRow) -> Text:
    label = r.status + (" ~est" if r.estimated else "")
    return Text(label, style=STATUS_STYLE.get(r.status, ""))


def _origin(r: DiffRow) -> str:
    """Where a diverged output's error comes from; otherwise how much it grew here."""
    amp = r.amplification
    factor = f" ×{amp:.3g}" if amp is not None and amp != float("inf") else ""
    if r.origin == "introduced":
        return "introduced"
    if r.origin in ("carried", "amplified"):
        return r.origin + factor
    if r.origin == "unknown":
        return "? (no inputs)"
    return factor.strip() or "-"


def _token(r: DiffRow) -> str:
    """The worst row: ``r1 p3`` (request 1, position 3), or ``#7`` when rows are not tokens."""
    key = r.worst_token_key
    if key is not None:
        return f"r{key[0]} p{key[1]}"
    return f"#{r.worst_row[0]}" if r.worst_row else "-"


def diff_table(report: DiffReport, rows: list[DiffRow], title: str | None = None, more: int = 0) -> Table:
    """Rows as a table; the first divergence is marked with ▶; ``more``: selected rows left out.

    SQNR and cosine are left to --json/--html: SQNR is -20 log10(rel_l2) and would only
    repeat the rel_l2 column.
    """
    table = Table(title=title, header_style="bold", show_lines=False,
                  caption="rel_l2: whole tensor; token: worst token row's relative error, judged "
                          "against limit (docs/diff.md)", caption_style="dim")
    for col, just in (("#", "right"), ("step", "right"), ("module", "left"), ("role.path", "left"),
                      ("shape", "left"), ("dtype", "left"), ("rel_l2", "right"), ("token", "right"),
                      ("at", "left"), ("limit", "right"), ("origin", "left"), ("status", "left")):
        table.add_column(col, justify=just, overflow="fold",
                         no_wrap=col in ("#", "step", "rel_l2", "token", "at", "limit", "status"),
                         min_width=30 if col == "module" else None)
    first = report.first_divergence.row if report.first_divergence else None
    prev = None
    for r in rows:
        if prev is not None and r.index != prev + 1:
            table.add_row("…", "", Text(f"{r.index - prev - 1} pair(s) skipped", style="dim"), *[""] * 9)
        prev = r.index
        mark = r.index == first
        est = "~" if r.estimated else ""
        cells = [
            ("▶ " if mark else "") + str(r.index), str(r.step), Text(_name(r)), Text(_where(r)), _shape(r),
            Text(one_line(_dtype(r), 40)),
            est + fmt_num(r.rel_l2, 3) if r.kind != "value" else "-",
            est + fmt_num(r.token_rel_l2, 3) if r.token_rel_l2 is not None else "-",
            _token(r),
            fmt_num(r.limit, 2) if r.limit not in (None, float("inf")) else "-",
            _origin(r) if r.role == "output" else "-", _status(r),
        ]
        table.add_row(*cells, style="bold" if mark else None)
    if more:
        table.add_row("…", "", Text(f"{more} more (--limit 0 shows them all)", style="dim"), *[""] * 9)
    return table


def verdict_text(report: DiffReport) -> Text:
    """The one-line verdict, colored."""
    return Text(one_line(report.summary_line, 2000), style=VERDICT_STYLE.get(report.verdict, "bold"))


def notes(report: DiffReport, max_unmatched: int = 5) -> list[Text]:
    """Warnings and a short unmatched listing."""
    out = [Text(f"note: {one_line(w, 500)}", style="yellow") for w in report.warnings]
    errors = [r for r in report.rows if r.status in ("error", "mismatch")]
    for r in errors[:max_unmatched]:
        out.append(Text(one_line(f"{r.status}: {r.name}: {r.reason}", 600), style=STATUS_STYLE[r.status]))
    if len(errors) > max_unmatched:
        out.append(Text(f"… {len(errors) - max_unmatched} more pair(s) not compared (see --json)", style="dim"))
    if report.unmatched:
        ca = sum(u.side == "a" for u in report.unmatched)
        cb = len(report.unmatched) - ca
        out.append(Text(f"unmatched: {ca} record(s) only in A, {cb} only in B (full list: --json)", style="yellow"))
        for u in report.unmatched[:max_unmatched]:
            p = f".{u.path}" if u.path else ""
            out.append(Text(one_line(f"  {u.side.upper()}: {u.module or '<root>'}[{u.call}].{u.role}{p}@{u.step} "
                                     f"— {u.reason}", 300), style="dim"))
    return out


def growth_table(report: DiffReport, n: int) -> Table:
    """The ``n`` outputs whose error grows most (``report.top_growth``)."""
    table = Table(title=f"where error grows most (top {n})", header_style="bold",
                  caption="growth: worst token's error / max(carried in, own rounding allowance)",
                  caption_style="dim")
    for col, just in (("#", "right"), ("step", "right"), ("module", "left"), ("path", "left"),
                      ("growth", "right"), ("token err", "right"), ("carried", "right"),
                      ("from", "left"), ("status", "left")):
        table.add_column(col, justify=just, overflow="fold", min_width=30 if col == "module" else None)
    for e in report.top_growth[:n]:
        table.add_row(str(e["row"]), str(e["step"]), Text(one_line(e["module"] or "<root>", 200)),
                      Text(one_line(e["path"] or "-", 80)), fmt_num(e["growth"], 3),
                      fmt_num(e["token_rel_l2"], 3), fmt_num(e["carried"], 3), e["carried_from"] or "-",
                      Text(e["status"], style=STATUS_STYLE.get(e["status"], "")))
    return table


def render(report: DiffReport, limit: int = 30, show_all: bool = False, top: int = 0) -> Group:
    """Everything ``tensortap diff`` prints: table, (top growth), notes, verdict."""
    picked = select_rows(report, limit=limit, show_all=show_all)
    fd_row = report.first_divergence.row if report.first_divergence else None
    rows, more = limit_rows(picked, 0 if show_all else limit, keep=fd_row)
    title = one_line(f"{report.run_a}  vs  {report.run_b}" + (f"  (floor {report.floor})" if report.floor else ""), 400)
    parts: list = [diff_table(report, rows, title=title, more=more)] if rows else []
    if top > 0 and report.top_growth:
        parts.append(growth_table(report, top))
    parts += notes(report)
    fd = report.first_divergence
    if fd is not None and fd.row is not None:
        r = report.rows[fd.row]
        if r.worst_index is not None:
            tok = f", token (request {r.worst_token[0]}, position {r.worst_token[1]})" if r.worst_token else ""
            parts.append(Text(f"worst element of the first divergence: index {r.worst_index}{tok}: "
                              f"A={fmt_num(r.worst_a, 6)} B={fmt_num(r.worst_b, 6)}", style="dim"))
        if fd.token:
            t = fd.token
            text = f" {t['text']!r}" if t.get("text") is not None else ""
            tid = f" (id {t['token_id']})" if t.get("token_id") is not None else ""
            parts.append(Text(one_line(f"worst token of the first divergence: request {t['request']}, "
                                       f"position {t['position']}{text}{tid}", 300), style="dim"))
        parts.append(Text("names read module[call].role.path@step: call = how many times the module already "
                          "ran in that step (0 first); path = where the tensor sits in its inputs/outputs",
                          style="dim"))
    parts.append(verdict_text(report))
    return Group(*parts)


@contextlib.contextmanager
def progress_bar(console: Console, min_pairs: int = PROGRESS_MIN_PAIRS) -> Iterator:
    """A ``progress(done, total)`` callback drawing a transient bar on ``console`` (stderr),
    shown only on a terminal and for at least ``min_pairs`` pairs."""
    if not console.is_terminal:
        yield None
        return
    bar = Progress(TextColumn("comparing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if total < min_pairs:
            return
        if task is None:
            bar.start()
            task = bar.add_task("diff", total=total)
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()
