"""The HTML view of a diff: one self-contained file that works offline.

The report's JSON document is embedded in a ``<script type="application/json">`` block
(with ``<``, ``>``, ``&`` escaped, so a module name cannot close the tag) and drawn by
inline JavaScript: per step, a log-scale plot of rel_l2 along execution order (inline
SVG), and a sortable, filterable table with the first divergence highlighted. Every name
reaches the page through ``textContent``, never as markup. No CDN, no network.

When drawing finishes the page sets ``data-plot-rendered`` (number of plots) and
``data-table-rows`` on ``<html>``; a script error sets ``data-js-error`` (tests load it in
headless Chromium). The URL fragment can preset the table:
``report.html#filter=mlp&status=bad&step=0&sort=-rel_l2``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tensortap.errors import one_line
from tensortap.htmlpage import json_for_script, write_page

# Row fields the page uses (the full rows stay in --json); keeps big reports small.
ROW_FIELDS = ("index", "rank", "step", "module", "call", "role", "path", "status", "kind", "estimated",
              "reason", "dtype_a", "dtype_b", "shape_a", "shape_b", "rel_l2", "max_abs", "mean_abs", "cosine",
              "rel_diff", "sqnr_db", "allclose_fail_frac", "nan_mismatch", "inf_mismatch", "worst_index",
              "worst_token", "top1_agree", "kl", "limit", "ratio", "tripped", "floor_rel_l2",
              "amplification", "origin", "tol_source", "module_b", "path_b", "token_rel_l2", "worst_row",
              "worst_row_is_token", "carried", "carried_from", "own_noise", "growth")


def render_html(report: dict[str, Any]) -> str:
    """The page for a ``DiffReport.to_dict()`` document."""
    data = {k: v for k, v in report.items() if k != "rows"}
    data["rows"] = [{k: r.get(k) for k in ROW_FIELDS} for r in report.get("rows", [])]
    for r in data["rows"]:
        # The error the verdict judges (worst token), else the whole tensor's (estimates).
        r["err"] = r["token_rel_l2"] if r.get("token_rel_l2") is not None else r.get("rel_l2")
    title = html.escape(one_line(f"tensortap diff: {report.get('run_a')} vs {report.get('run_b')}", 300))
    return _TEMPLATE.replace("__TITLE__", title).replace("__DATA__", json_for_script(data))


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Write the page to ``path`` and return it."""
    return write_page(path, render_html(report))


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --fg:#1d232a; --bg:#fff; --muted:#6b7785; --line:#e3e7ec; --ok:#2e9e5b; --bad:#d63a3a;
        --mis:#a040c0; --err:#d89a00; --first:#fff3b0; --head:#f4f6f8; }
* { box-sizing: border-box; }
body { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 18px 24px 40px; }
h1 { font-size: 18px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 22px 0 6px; }
.muted { color: var(--muted); }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.verdict.agree { background: #e6f6ec; color: #1d6b3d; }
.verdict.diverged { background: #fde8e8; color: #9b1c1c; }
.verdict.inconclusive { background: #fff4d6; color: #7a5600; }
.verdict a { color: inherit; }
.notes li { color: #7a5600; }
.plots { display: flex; flex-wrap: wrap; gap: 14px; }
.plot { border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; }
.plot h3 { font-size: 13px; margin: 0 0 2px; }
svg text { font: 10px system-ui, sans-serif; fill: var(--muted); }
.legend span { display: inline-block; margin-right: 12px; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 4px; vertical-align: -1px; }
.controls { display: flex; gap: 10px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
.controls input[type=search] { width: 320px; padding: 4px 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 6px; text-align: left; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
th { background: var(--head); position: sticky; top: 0; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " ▲"; } th.sorted-desc::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.first td { background: var(--first); font-weight: 600; }
tr.flash td { outline: 2px solid #f0a000; }
.s-ok { color: var(--ok); } .s-diverged { color: var(--bad); font-weight: 600; }
.s-mismatch { color: var(--mis); font-weight: 600; } .s-error { color: var(--err); font-weight: 600; }
#jserror { display: none; background: #fde8e8; color: #9b1c1c; padding: 8px; border-radius: 6px; }
</style>
</head>
<body>
<div id="jserror"></div>
<h1>tensortap diff</h1>
<div class="muted" id="runs"></div>
<div class="verdict" id="verdict"></div>
<ul class="notes" id="notes"></ul>
<h2>Error along execution order</h2>
<div class="legend muted">
  <span><i class="dot" style="background:var(--ok)"></i>ok</span>
  <span><i class="dot" style="background:var(--bad)"></i>diverged</span>
  <span><i class="dot" style="background:var(--mis)"></i>mismatch</span>
  <span><i class="dot" style="background:var(--err)"></i>error</span>
  <span>— grey ticks: allowed error (limit); ◎ first divergence; y: worst token's relative error (log scale); points at the bottom are exact (0)</span>
</div>
<div class="plots" id="plots"></div>
<h2>Pairs</h2>
<div class="controls">
  <input type="search" id="filter" placeholder="filter: module, role or path (regex)">
  <label>status <select id="status"><option value="">all</option><option value="bad">not ok</option>
    <option>ok</option><option>diverged</option><option>mismatch</option><option>error</option></select></label>
  <label>step <select id="step"><option value="">all</option></select></label>
  <label><input type="checkbox" id="values"> show non-tensor values</label>
  <span class="muted" id="count"></span>
</div>
<div class="scroll"><table id="rows"><thead><tr id="head"></tr></thead><tbody id="body"></tbody></table></div>
<h2>Unmatched records</h2>
<div class="muted" id="unmatched-count"></div>
<table id="unmatched"><thead><tr><th>side</th><th>step</th><th>module</th><th>call</th><th>role</th><th>path</th><th>why</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="tt-data">__DATA__</script>
<script>
"use strict";
window.onerror = function (msg, src, line) {
  document.documentElement.setAttribute("data-js-error", String(msg) + " @" + line);
  var box = document.getElementById("jserror");
  box.style.display = "block";
  box.textContent = "report script error: " + msg;
};
(function () {
  var D = JSON.parse(document.getElementById("tt-data").textContent);
  var rows = D.rows || [];
  var SVGNS = "http://www.w3.org/2000/svg";
  var COLORS = { ok: "#2e9e5b", diverged: "#d63a3a", mismatch: "#a040c0", error: "#d89a00" };
  var first = D.first_divergence;
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(x, d) {
    if (x === null || x === undefined) return "-";
    if (typeof x !== "number") return String(x);
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1e-3 && a < 1e5) return String(Number(x.toPrecision(d || 4)));
    return x.toExponential(Math.max((d || 4) - 2, 1));
  }
  function name(r) { return (r.module || "<root>") + "[" + r.call + "]." + r.role + (r.path ? "." + r.path : "") + "@" + r.step; }

  // -- header ------------------------------------------------------------------------
  document.getElementById("runs").textContent = "A: " + D.run_a + "   B: " + D.run_b +
    (D.floor ? "   floor: " + D.floor : "") + "   (" + (D.counts.pairs || 0) + " pairs, " +
    ((D.counts.unmatched_a || 0) + (D.counts.unmatched_b || 0)) + " unmatched)";
  var v = document.getElementById("verdict");
  v.className = "verdict " + D.verdict;
  v.textContent = D.summary + " ";
  if (first && first.row !== null && first.row !== undefined) {
    var a = el("a", { href: "#row-" + first.row }, "jump to the first divergence");
    a.addEventListener("click", function (ev) { ev.preventDefault(); reveal(first.row); });
    v.appendChild(a);
  }
  var notes = document.getElementById("notes");
  (D.warnings || []).forEach(function (w) { notes.appendChild(el("li", null, w)); });
  if (first && first.token) {
    var t = first.token;
    notes.appendChild(el("li", null, "worst token of the first divergence: request " + t.request +
      ", position " + t.position + (t.text !== null && t.text !== undefined ? " " + JSON.stringify(t.text) : "") +
      (t.token_id !== null && t.token_id !== undefined ? " (id " + t.token_id + ")" : "")));
  }
  if ((D.top_growth || []).length) {
    var li = el("li", null, "where error grows most: ");
    D.top_growth.slice(0, 10).forEach(function (e, i) {
      var a = el("a", { href: "#row-" + e.row }, (i ? ", " : "") + (e.module || "<root>") + "@" + e.step +
        " ×" + fmt(e.growth, 3));
      a.addEventListener("click", function (ev) { ev.preventDefault(); reveal(e.row); });
      li.appendChild(a);
    });
    notes.appendChild(li);
  }

  // -- plots: one per step, rel_l2 on a log scale along execution order ----------------
  var FLOOR = 1e-12;
  var bySteps = {};
  rows.forEach(function (r) {
    if (r.kind === "value") return;
    (bySteps[r.step] = bySteps[r.step] || []).push(r);
  });
  var steps = Object.keys(bySteps).map(Number).sort(function (x, y) { return x - y; });
  var plots = document.getElementById("plots");
  var drawn = 0;
  steps.forEach(function (s) {
    var list = bySteps[s];
    var W = 560, H = 220, L = 46, R = 10, T = 10, B = 26;
    var vals = [];
    list.forEach(function (r) {
      if (typeof r.err === "number" && r.err > 0) vals.push(r.err);
      if (typeof r.limit === "number" && r.limit > 0) vals.push(r.limit);
    });
    var lo = Math.floor(Math.log10(Math.max(FLOOR, vals.length ? Math.min.apply(null, vals) : 1e-8)));
    var hi = Math.ceil(Math.log10(Math.max(vals.length ? Math.max.apply(null, vals) : 1, 10 * Math.pow(10, lo))));
    lo = lo - 1;
    if (hi <= lo) hi = lo + 1;
    var n = list.length;
    function X(i) { return L + (n <= 1 ? (W - L - R) / 2 : i * (W - L - R) / (n - 1)); }
    function Y(val) {
      var lv = (typeof val === "number" && val > 0) ? Math.log10(val) : lo;
      lv = Math.max(lo, Math.min(hi, lv));
      return T + (hi - lv) * (H - T - B) / (hi - lo);
    }
    var box = el("div", { "class": "plot" });
    box.appendChild(el("h3", null, "step " + s + " — " + n + " tensors"));
    var g = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    var stepT = Math.max(1, Math.ceil((hi - lo) / 6));
    for (var e = lo; e <= hi; e += stepT) {
      g.appendChild(svg("line", { x1: L, x2: W - R, y1: Y(Math.pow(10, e)), y2: Y(Math.pow(10, e)), stroke: "#eef0f3" }));
      var t = svg("text", { x: L - 4, y: Y(Math.pow(10, e)) + 3, "text-anchor": "end" });
      t.textContent = e === lo ? "≤1e" + e : "1e" + e;
      g.appendChild(t);
    }
    g.appendChild(svg("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#c9d0d8" }));
    var xl = svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" });
    xl.textContent = "execution order →";
    g.appendChild(xl);
    var pts = [];
    list.forEach(function (r, i) {
      if (typeof r.limit === "number" && r.limit > 0 && isFinite(r.limit)) {
        g.appendChild(svg("line", { x1: X(i) - 2.5, x2: X(i) + 2.5, y1: Y(r.limit), y2: Y(r.limit), stroke: "#a9b2bd" }));
      }
      if (r.err !== null && r.err !== undefined) pts.push(X(i).toFixed(1) + "," + Y(r.err).toFixed(1));
    });
    if (pts.length > 1) g.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#c2cad3", "stroke-width": 1 }));
    list.forEach(function (r, i) {
      var y = Y(r.err === null || r.err === undefined ? (r.status === "ok" ? 0 : Math.pow(10, hi)) : r.err);
      var c = svg("circle", { cx: X(i), cy: y, r: r.status === "ok" ? 2.6 : 3.6, fill: COLORS[r.status] || "#888",
                              "data-row": r.index, style: "cursor:pointer" });
      var tip = svg("title", {});
      tip.textContent = name(r) + "\nworst token " + fmt(r.err) + "  limit " + fmt(r.limit) + "  rel_l2 " + fmt(r.rel_l2) + "\n" + r.status +
        (r.origin ? " (" + r.origin + ")" : "");
      c.appendChild(tip);
      c.addEventListener("click", function () { reveal(r.index); });
      g.appendChild(c);
      if (first && first.row === r.index) {
        g.appendChild(svg("circle", { cx: X(i), cy: y, r: 8, fill: "none", stroke: "#d63a3a", "stroke-width": 2 }));
        var right = X(i) > W / 2;
        var lab = svg("text", { x: right ? X(i) - 11 : X(i) + 11, y: Math.max(y - 8, 12),
                                "text-anchor": right ? "end" : "start" });
        lab.setAttribute("style", "fill:#d63a3a;font-weight:600");
        lab.textContent = "first divergence: " + (r.module || "<root>");
        g.appendChild(lab);
      }
    });
    box.appendChild(g);
    plots.appendChild(box);
    drawn += 1;
  });

  // -- table -------------------------------------------------------------------------
  var COLS = [
    ["#", "index", "num"], ["step", "step", "num"], ["module", "module", "name"], ["call", "call", "num"],
    ["role", "role"], ["path", "path", "name"], ["shape", "shape_a"], ["dtype", "dtype_a"],
    ["rel_l2", "rel_l2", "num"], ["token", "token_rel_l2", "num"], ["at", "worst_row"],
    ["growth", "growth", "num"], ["max_abs", "max_abs", "num"], ["cosine", "cosine", "num"],
    ["SQNR dB", "sqnr_db", "num"], ["limit", "limit", "num"], ["err/limit", "ratio", "num"],
    ["amp", "amplification", "num"], ["top-1", "top1_agree", "num"], ["KL", "kl", "num"],
    ["origin", "origin"], ["status", "status"], ["note", "reason", "name"]
  ];
  var head = document.getElementById("head");
  var sortKey = "index", sortDir = 1;
  COLS.forEach(function (c) {
    var th = el("th", { "data-key": c[1] }, c[0]);
    th.addEventListener("click", function () {
      if (sortKey === c[1]) sortDir = -sortDir; else { sortKey = c[1]; sortDir = 1; }
      draw();
    });
    head.appendChild(th);
  });
  var stepSel = document.getElementById("step");
  steps.forEach(function (s) { stepSel.appendChild(el("option", { value: String(s) }, String(s))); });
  function cell(r, c) {
    var v = r[c[1]];
    if (c[1] === "shape_a") {
      var s = v ? v.join("x") : (r.kind === "value" ? "value" : "-");
      if (r.shape_b && JSON.stringify(r.shape_b) !== JSON.stringify(v)) s += " / " + r.shape_b.join("x");
      return s;
    }
    if (c[1] === "dtype_a") return r.dtype_a === r.dtype_b ? (v || "-") : (r.dtype_a + "→" + r.dtype_b);
    if (c[1] === "module") return (v || "<root>");
    if (c[1] === "amplification") return v === null || v === undefined ? (r.origin === "introduced" ? "new" : "-") : fmt(v, 3) + "x";
    if (c[1] === "cosine" && typeof v === "number") return v.toFixed(6);
    if (c[1] === "sqnr_db" && (v === null || v === undefined)) return r.rel_l2 === 0 ? "∞" : "-";
    if (c[1] === "status") return v + (r.estimated ? " ~est" : "");
    if (typeof v === "number") return fmt(v);
    return v === null || v === undefined ? "" : String(v);
  }
  function cmp(a, b) {
    var x = a[sortKey], y = b[sortKey];
    var nx = x === null || x === undefined, ny = y === null || y === undefined;
    if (nx || ny) return nx === ny ? a.index - b.index : (nx ? 1 : -1);
    if (typeof x === "number" && typeof y === "number") return (x - y) * sortDir || a.index - b.index;
    return String(x).localeCompare(String(y)) * sortDir || a.index - b.index;
  }
  var body = document.getElementById("body");
  function draw() {
    var q = document.getElementById("filter").value, re = null;
    if (q) { try { re = new RegExp(q, "i"); } catch (err) { re = null; } }
    var st = document.getElementById("status").value, sp = document.getElementById("step").value;
    var showValues = document.getElementById("values").checked;
    var list = rows.filter(function (r) {
      if (!showValues && r.kind === "value" && r.status === "ok") return false;
      if (st === "bad" && r.status === "ok") return false;
      if (st && st !== "bad" && r.status !== st) return false;
      if (sp !== "" && String(r.step) !== sp) return false;
      if (q) {
        var hay = (r.module || "<root>") + " " + r.role + " " + (r.path || "");
        if (re ? !re.test(hay) : hay.toLowerCase().indexOf(q.toLowerCase()) < 0) return false;
      }
      return true;
    }).sort(cmp);
    Array.prototype.forEach.call(head.children, function (th) {
      th.className = th.getAttribute("data-key") === sortKey ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
    var frag = document.createDocumentFragment();
    list.forEach(function (r) {
      var tr = el("tr", { id: "row-" + r.index });
      if (first && first.row === r.index) tr.className = "first";
      COLS.forEach(function (c) {
        var td = el("td", null, cell(r, c));
        if (c[2]) td.className = c[2];
        if (c[1] === "status") td.className = "s-" + r.status;
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(frag);
    document.getElementById("count").textContent = list.length + " of " + rows.length + " pairs";
    document.documentElement.setAttribute("data-table-rows", String(list.length));
  }
  function reveal(index) {
    var tr = document.getElementById("row-" + index);
    if (!tr) {
      document.getElementById("filter").value = "";
      document.getElementById("status").value = "";
      document.getElementById("step").value = "";
      document.getElementById("values").checked = true;
      draw();
      tr = document.getElementById("row-" + index);
    }
    if (tr) {
      tr.scrollIntoView({ block: "center" });
      tr.classList.add("flash");
      setTimeout(function () { tr.classList.remove("flash"); }, 1500);
    }
  }
  // Initial state from the URL: #filter=REGEX&status=bad&step=0&sort=-rel_l2 (shareable views).
  (function () {
    var h = (location.hash || "").replace(/^#/, "");
    if (!h) return;
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("="), k = i < 0 ? kv : kv.slice(0, i), v = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1));
      if (k === "filter") document.getElementById("filter").value = v;
      else if (k === "status") document.getElementById("status").value = v;
      else if (k === "step") document.getElementById("step").value = v;
      else if (k === "values") document.getElementById("values").checked = v !== "0";
      else if (k === "sort" && v) { sortDir = v.charAt(0) === "-" ? -1 : 1; sortKey = v.replace(/^[-+]/, ""); }
    });
  })();
  ["filter", "status", "step", "values"].forEach(function (id) {
    document.getElementById(id).addEventListener("input", draw);
    document.getElementById(id).addEventListener("change", draw);
  });
  draw();

  // -- unmatched -----------------------------------------------------------------------
  var um = D.unmatched || [];
  document.getElementById("unmatched-count").textContent = um.length ? (um.length + " record(s) only one run has") : "none: every record has a partner";
  var ub = document.querySelector("#unmatched tbody");
  var ufrag = document.createDocumentFragment();
  um.slice(0, 5000).forEach(function (u) {
    var tr = el("tr");
    [u.side.toUpperCase(), u.step, u.module || "<root>", u.call, u.role, u.path, u.reason].forEach(function (x) {
      tr.appendChild(el("td", null, x));
    });
    ufrag.appendChild(tr);
  });
  ub.appendChild(ufrag);
  document.documentElement.setAttribute("data-plot-rendered", String(drawn));
})();
</script>
</body>
</html>
"""
