"""Amplification: is an output's error introduced by its module or carried in with its inputs?

For every output row: ``input_rel_l2`` is the largest rel_l2 among the same module
call's compared floating inputs (same rank, step, module, call), and
``amplification = rel_l2(output) / input_rel_l2``. A diverged output whose inputs all
agree was *introduced* here; if an input already diverged, the error was *amplified*
(grew ``AMPLIFIED`` times or more) or *carried*.

Errors can also arrive through state that is not a captured input (a KV cache filled in
an earlier step): such an error looks introduced. The first divergence, which precedes
any carried state, is unaffected.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

from tensortap.compare.result import AMPLIFIED, DiffRow
from tensortap.compare.tolerance import dtype_category


Feeds = Callable[[DiffRow], list[tuple]]
"""For mappings whose items are not module calls (anchors): the keys
``(rank, step, module, call, role, path)`` of the rows that feed a row."""


def annotate(rows: list[DiffRow], feeds: Feeds | None = None) -> None:
    """Fill ``input_rel_l2``, ``amplification`` and ``origin`` of output rows in place."""
    inputs: dict[tuple, list[DiffRow]] = defaultdict(list)
    by_key = {(r.rank, r.step, r.module, r.call, r.role, r.path): r for r in rows}
    for r in rows:
        # Compared tensor inputs of any dtype: a changed token id is a changed input too.
        if r.role == "input" and r.kind != "value" and r.status in ("ok", "diverged"):
            inputs[(r.rank, r.step, r.module, r.call)].append(r)
    for r in rows:
        if r.role != "output" or r.rel_l2 is None:
            continue
        ins = inputs.get((r.rank, r.step, r.module, r.call), [])
        if feeds is not None:
            ins = ins + [by_key[k] for k in feeds(r) if k in by_key and by_key[k].status in ("ok", "diverged")]
        # Only floating inputs give an error magnitude (integer data are exact or not).
        errs = [i.rel_l2 for i in ins if i.rel_l2 is not None and dtype_category(i.dtype_a) == "float"]
        if errs:
            r.input_rel_l2 = max(errs)
            if r.input_rel_l2 > 0:
                r.amplification = r.rel_l2 / r.input_rel_l2
            elif r.rel_l2 > 0:
                r.amplification = math.inf
        if r.status != "diverged":
            continue
        if not ins:
            r.origin = "unknown"
        elif not any(i.status == "diverged" for i in ins):
            r.origin = "introduced"
        elif any(i.status == "diverged" and dtype_category(i.dtype_a) != "float" for i in ins):
            r.origin = "carried"  # its token ids / positions already differ
        elif r.amplification is not None and r.amplification >= AMPLIFIED:
            r.origin = "amplified"
        else:
            r.origin = "carried"
