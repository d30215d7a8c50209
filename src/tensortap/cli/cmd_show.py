"""``tensortap show``: one module's records in detail, with values."""

from __future__ import annotations

import re

from rich.panel import Panel
from rich.text import Text

from tensortap.cli.common import add_command, console
from tensortap.cli.sources import add_open_options, open_source
from tensortap.errors import TensortapError, one_line
from tensortap.report.records import fmt_num


def register(sub) -> None:
    p = add_command(sub, "show", "Show one module's captured tensors: stats, a preview of values, tokens.",
                    "tensortap show runs/a model.layers.1.mlp --step 0 --role output")
    p.add_argument("run", metavar="RUN")
    p.add_argument("module", metavar="MODULE", help="exact module name ('' for the root)")
    p.add_argument("--step", type=int)
    p.add_argument("--call", type=int)
    p.add_argument("--role", choices=["input", "output"])
    p.add_argument("--path", help="exact path inside the arguments/outputs")
    p.add_argument("--items", type=int, default=8, help="values to preview per tensor")
    add_open_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    r = open_source(args.run, args)
    recs = r.records(module=f"^{re.escape(args.module)}$", step=args.step, call=args.call, role=args.role)
    if args.path is not None:
        recs = [x for x in recs if x.path == args.path]
    if not recs:
        near = [m for m in r.modules() if args.module and args.module.split(".")[-1] in m][:5]
        hint = f"; similar: {', '.join(near)}" if near else "; list modules with `tensortap ls RUN`"
        raise TensortapError(f"no records for module {args.module!r} in {r.path} with these filters{hint}")
    for rec in recs:
        lines = [f"kind {rec.kind}  dtype {rec.dtype}  shape {list(rec.shape) if rec.shape else '-'}"
                 f"  device {rec.device or '-'}  seq {rec.seq}  rank {rec.rank}"]
        st = rec.stats
        if st:
            lines.append(f"min {fmt_num(st.min)}  max {fmt_num(st.max)}  mean {fmt_num(st.mean)}  "
                         f"std {fmt_num(st.std)}  absmax {fmt_num(st.absmax)}  l2 {fmt_num(st.l2)}  "
                         f"nan {st.nan}  inf {st.inf}  zero {st.zero}")
        if rec.kind == "value":
            lines.append(f"value {rec.value!r}")
        elif rec.has_data:
            t = r.load(rec)
            flat = t.reshape(-1)[: args.items]
            vals = ", ".join(fmt_num(float(v)) for v in flat.to(torch.float64).tolist())
            lines.append(f"first {len(flat)} values: [{vals}{', …' if t.numel() > len(flat) else ''}]")
        for key, val in (rec.extra or {}).items():
            lines.append(f"{key}: {val}")
        # Text, not markup: values, extras and names in a run may hold "[...]" or control codes.
        body = Text("\n".join(one_line(line) for line in lines))
        console.print(Panel(body, title=Text(rec.label), title_align="left"), highlight=False)
    steps = sorted({x.step for x in recs})
    for s in steps[:3]:
        tok = r.tokens(s, recs[0].rank)
        if tok:
            req, pos = tok.get("request"), tok.get("position")
            rows = list(zip(req, pos)) if isinstance(req, list) and isinstance(pos, list) else []
            console.print(Text(one_line(
                f"step {s} tokens ({tok.get('layout')}, shape {tok.get('batch_shape')}): "
                f"(request, position) per row {rows[:16]}{' …' if len(rows) > 16 else ''}")),
                highlight=False)
    return 0
