"""Where error grows most: the answer to "where does bf16 (or this quantization) hurt".

A row's ``growth`` (compare.judge) is its worst token's error over what it carried in
(or, when that is smaller, over its own rounding allowance): a module that only passes
error on is near 1, one that adds error of its own is far above. Ranking outputs by it
names the modules that add the most error, whatever their depth.
"""

from __future__ import annotations

import math
from typing import Any

from tensortap.compare.result import DiffRow

PER = ("overall", "step")


def top_growth(rows: list[DiffRow], n: int = 10, per: str = "overall") -> list[DiffRow]:
    """The ``n`` output rows whose error grows most, largest first.

    ``per="overall"``: one row per module output (the step where it grows most);
    ``per="step"``: every (step, module output) on its own.
    """
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, not {per!r}")
    best: dict[tuple, DiffRow] = {}
    for r in rows:
        if r.role != "output" or r.growth is None or not r.token_rel_l2:
            continue
        key = (r.rank, r.module, r.call, r.path) + ((r.step,) if per == "step" else ())
        old = best.get(key)
        if old is None or _g(r) > _g(old):
            best[key] = r
    return sorted(best.values(), key=lambda r: (-_g(r), r.index))[:max(0, n)]


def _g(r: DiffRow) -> float:
    g = r.growth if r.growth is not None else 0.0
    return g if not math.isnan(g) else 0.0


def growth_entry(r: DiffRow) -> dict[str, Any]:
    """One ranked row for JSON: where, how much it grew, from what."""
    return {"row": r.index, "module": r.module, "step": r.step, "call": r.call, "path": r.path,
            "growth": r.growth, "token_rel_l2": r.token_rel_l2, "carried": r.carried,
            "carried_from": r.carried_from, "own_noise": r.own_noise, "rel_l2": r.rel_l2,
            "worst_row": r.worst_row, "status": r.status}
