"""Listing records: the table behind ``tensortap ls`` and its JSON form."""

from __future__ import annotations

from typing import Any, Iterable

from rich.table import Table
from rich.text import Text

from tensortap.errors import one_line
from tensortap.store.record import Record


def fmt_num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    ax = abs(x)
    if 1e-3 <= ax < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 2, 1)}e}"


def record_summary(rec: Record) -> dict[str, Any]:
    """The JSON object ``ls --json`` prints for one record."""
    d: dict[str, Any] = {
        "module": rec.module, "step": rec.step, "call": rec.call, "role": rec.role,
        "path": rec.path, "shape": list(rec.shape) if rec.shape is not None else None,
        "dtype": rec.dtype, "kind": rec.kind, "seq": rec.seq, "rank": rec.rank,
    }
    if rec.stats is not None:
        d["stats"] = rec.stats.to_json()
    if rec.kind == "value":
        d["value"] = rec.value
    return d


def records_table(records: Iterable[Record], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", show_lines=False)
    for col in ("module", "step", "call", "role", "path", "shape", "dtype", "absmax", "mean", "nan/inf"):
        table.add_column(col, justify="right" if col in ("step", "call", "absmax", "mean") else "left",
                         overflow="fold", no_wrap=col in ("role", "dtype", "nan/inf", "step", "call"))
    for rec in records:
        st = rec.stats
        bad = f"{st.nan}/{st.inf}" if st else "-"
        shape = "x".join(str(s) for s in rec.shape) if rec.shape is not None else "-"
        if rec.kind == "value":
            shape, dtype = "value", repr(rec.value)[:24]
        else:
            dtype = (rec.dtype or "-") + ("" if rec.kind == "tensor" else " (stats)")
        table.add_row(
            # one_line: names from a run may hold control codes (terminal escapes).
            Text(one_line(rec.module or "<root>")), str(rec.step), str(rec.call), rec.role,
            Text(one_line(rec.path or "-")), shape, Text(one_line(dtype)), fmt_num(st.absmax if st else None), fmt_num(st.mean if st else None),
            Text(bad, style="bold red" if st and (st.nan or st.inf) else ""),
        )
    return table
