"""The ladder's table (rich, for the terminal) and its self-contained HTML page."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tensortap.htmlpage import json_for_script, write_page
from tensortap.integrations.vllm.ladder.result import (
    AGREE, DIFFERS, ERROR, REFERENCE, UNAVAILABLE, LadderResult, RungOutcome,
)

STYLE = {REFERENCE: "cyan", AGREE: "green", DIFFERS: "bold red", ERROR: "yellow", UNAVAILABLE: "dim"}


def _fmt_s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f} s"


def engine_text(o: RungOutcome) -> str:
    """What vLLM really ran (it rewrites some settings per platform)."""
    e = o.engine
    if not e:
        return ""
    if e.get("enforce_eager") or e.get("compilation_mode") == "NONE":
        parts = ["eager"]
    else:
        parts = [f"{e.get('compilation_mode')}", f"backend {e.get('compilation_backend')}"]
    if o.cache and o.cache != "unused":
        parts.append(f"cache {o.cache}")
    if e.get("cudagraph_mode") not in (None, "NONE"):
        parts.append(f"cudagraphs {e.get('cudagraph_mode')}")
    return ", ".join(parts)


def tokens_text(o: RungOutcome) -> str:
    if o.status == REFERENCE:
        return "reference"
    if o.tokens is None:
        return "—"
    if o.tokens.equal:
        return "equal"
    return "differ: " + ", ".join(f"prompt {i} @ {p}" for i, p in enumerate(o.tokens.first_diff) if p is not None)


def logprob_text(o: RungOutcome) -> str:
    if o.logprobs is None or o.logprobs.max_abs_diff is None:
        return "—"
    return f"{o.logprobs.max_abs_diff:.2e}"


def anchor_text(o: RungOutcome) -> str:
    a = o.anchors
    if o.status == REFERENCE:
        return "reference" + ("" if o.run_dir else " (no capture)")
    if a is None:
        return "—"
    if not a.compared:
        return f"not compared: {a.reason}"
    if a.first_anchor:
        return f"{a.first_anchor} (step {a.step})"
    if a.verdict == "agree":
        return f"none ({a.pairs} anchor pairs agree)"
    return f"{a.verdict}: {a.reason or ''}"


def time_text(o: RungOutcome) -> str:
    if o.status == UNAVAILABLE:
        return "—"
    start = f" (engine start {o.engine_start_s:.1f})" if o.engine_start_s is not None else ""
    return f"{o.time_s:.1f} s{start}"


def render(result: LadderResult) -> Group:
    """The terminal view: the table, then what it means."""
    table = Table(title=f"vLLM compile ladder — {escape(result.model)}", title_justify="left",
                  show_lines=False, header_style="bold")
    for col, kw in (("rung", {"no_wrap": True}), ("settings", {}), ("tokens", {}),
                    ("max |Δ logprob|", {"justify": "right"}), ("first divergent anchor", {}),
                    ("time", {"justify": "right", "no_wrap": True})):
        table.add_column(col, **kw)
    for o in result.rungs:
        style = STYLE.get(o.status, "")
        settings = escape(o.settings or o.rung.settings())
        eng = engine_text(o)
        if eng:
            settings += f"\n[dim]→ {escape(eng)}[/dim]"
        tokens = o.error if o.status in (ERROR, UNAVAILABLE) else tokens_text(o)
        lp = logprob_text(o)
        lp_style = "red" if o.logprobs is not None and o.logprobs.differs else ""
        anchor = anchor_text(o) if o.status not in (ERROR, UNAVAILABLE) else "—"
        anchor_style = "red" if o.anchors is not None and o.anchors.differs else (
            "yellow" if o.anchors is not None and not o.anchors.compared else "")
        if o.tokens is not None and not o.tokens.equal:
            tok_style = "red"
        else:
            tok_style = style if o.status in (ERROR, UNAVAILABLE) else ""
        table.add_row(Text(o.rung.name, style=style), settings, Text(tokens or "", style=tok_style),
                      Text(lp, style=lp_style), Text(anchor, style=anchor_style), time_text(o))
    lines: list[Any] = [table]
    verdict_style = {"agree": "bold green", "differs": "bold red"}.get(result.verdict, "bold yellow")
    lines.append(Text(result.summary(), style=verdict_style))
    lines.append(Text(result.explanation.text))
    for o in result.rungs:
        for note in o.notes:
            lines.append(Text(f"{o.rung.name}: {note}", style="dim"))
    for note in result.notes:
        lines.append(Text(f"note: {note}", style="dim"))
    lines.append(Text(f"total {result.total_s:.1f} s; results in {result.out}/ladder.json; "
                      f"tlparse logs: tlparse {result.out}/<rung>/trace/<file>", style="dim"))
    return Group(*lines)


# -- HTML ---------------------------------------------------------------------------------
def render_html(result: LadderResult) -> str:
    """A static, self-contained page: the table, the explanation, and the JSON document."""
    e = html.escape
    rows = []
    for o in result.rungs:
        tokens = o.error if o.status in (ERROR, UNAVAILABLE) else tokens_text(o)
        anchor = anchor_text(o) if o.status not in (ERROR, UNAVAILABLE) else "—"
        eng = engine_text(o)
        ran = f"<br><span class=muted>→ {e(eng)}</span>" if eng else ""
        rows.append(
            f'<tr class="{e(o.status)}"><td class="name">{e(o.rung.name)}</td>'
            f'<td>{e(o.settings or o.rung.settings())}{ran}</td>'
            f'<td>{e(tokens or "")}</td><td class="num">{e(logprob_text(o))}</td>'
            f'<td>{e(anchor)}</td><td class="num">{e(time_text(o))}</td></tr>')
    notes = [f"{o.rung.name}: {n}" for o in result.rungs for n in o.notes] + list(result.notes)
    notes_html = "".join(f"<li>{e(n)}</li>" for n in notes)
    values = {
        "__TITLE__": e(f"tensortap vLLM compile ladder: {result.model}"),
        "__MODEL__": e(result.model),
        "__VERDICT_CLASS__": e(result.verdict),
        "__SUMMARY__": e(result.summary()),
        "__EXPLANATION__": e(result.explanation.text),
        "__ROWS__": "\n".join(rows),
        "__NOTES__": f"<ul class=notes>{notes_html}</ul>" if notes_html else "",
        "__META__": e(f"{len(result.prompts)} prompt(s), {result.max_new_tokens} new tokens, dtype "
                      f"{result.dtype or 'auto'}, {result.platform}, total {result.total_s:.1f} s"),
        "__DATA__": json_for_script(result.to_dict()),
    }
    # One pass, so a placeholder-like string inside a value (a path, a prompt) stays as it is.
    return re.sub(r"__[A-Z_]+__", lambda m: values.get(m.group(0), m.group(0)), _TEMPLATE)


def write_html(result: LadderResult, path: str | Path) -> Path:
    return write_page(path, render_html(result))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --fg:#1d232a; --muted:#6b7785; --line:#e3e7ec; --head:#f4f6f8; }
body { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0; padding: 18px 24px 40px; }
h1 { font-size: 18px; margin: 0 0 4px; }
.muted { color: var(--muted); }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.verdict.agree { background: #e6f6ec; color: #1d6b3d; }
.verdict.differs { background: #fde8e8; color: #9b1c1c; }
.verdict.error { background: #fff4d6; color: #7a5600; }
table { border-collapse: collapse; width: 100%; margin-top: 10px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: var(--head); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { font-weight: 600; white-space: nowrap; }
tr.differs td.name { color: #c02626; } tr.agree td.name { color: #2e9e5b; }
tr.reference td.name { color: #1b6fa8; } tr.error td.name { color: #b07d00; }
tr.unavailable td { color: var(--muted); }
.notes li { color: #7a5600; }
</style>
</head>
<body>
<h1>vLLM compile ladder</h1>
<div class="muted">__MODEL__ — __META__</div>
<div class="verdict __VERDICT_CLASS__">__SUMMARY__</div>
<div>__EXPLANATION__</div>
<table>
<thead><tr><th>rung</th><th>settings</th><th>tokens</th><th>max |&Delta; logprob|</th>
<th>first divergent anchor</th><th>time</th></tr></thead>
<tbody>
__ROWS__
</tbody>
</table>
__NOTES__
<script type="application/json" id="ladder-data">__DATA__</script>
</body>
</html>
"""
