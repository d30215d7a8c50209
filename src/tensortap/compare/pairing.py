"""Pairing: match the items of two runs by canonical key; list every item only one side has."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from tensortap.compare.mapping import Item, PairKey
from tensortap.errors import ConfigError


@dataclass(frozen=True)
class Unmatched:
    """A record that only one run has (or that could not be paired)."""

    side: str
    """``a`` or ``b``."""
    rank: int
    step: int
    module: str
    call: int
    role: str
    path: str
    seq: int
    raw_module: str
    raw_path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side, "rank": self.rank, "step": self.step, "module": self.module,
            "call": self.call, "role": self.role, "path": self.path, "seq": self.seq,
            "raw_module": self.raw_module, "raw_path": self.raw_path, "reason": self.reason,
        }


@dataclass
class Pairing:
    pairs: list[tuple[Item, Item]] = field(default_factory=list)
    """In execution order of run A."""
    unmatched: list[Unmatched] = field(default_factory=list)
    count_a: int = 0
    count_b: int = 0


def only_filter(pattern: str | None):
    """``--only REGEX``: keep items whose canonical module name matches (``re.search``)."""
    if not pattern:
        return lambda item: True
    try:
        rx = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        raise ConfigError(f"invalid --only regex {pattern!r}: {e}") from None
    return lambda item: rx.search(item.module) is not None


def _index(items: Iterable[Item], side: str, unmatched: list[Unmatched]) -> dict[PairKey, Item]:
    out: dict[PairKey, Item] = {}
    for it in sorted(items, key=lambda i: i.order):
        if it.key in out:
            # Two records renamed onto one key: keep the first, never drop the other silently.
            unmatched.append(_unmatched(it, side, "duplicate key after renaming (another record of this run "
                                                  "already has it)"))
            continue
        out[it.key] = it
    return out


def _unmatched(it: Item, side: str, reason: str) -> Unmatched:
    rank, step, module, call, role, path = it.key
    return Unmatched(side, rank, step, module, call, role, path, it.record.seq,
                     it.record.module, it.record.path, reason)


def _why_missing(key: PairKey, other: dict[PairKey, Item], other_name: str,
                 steps: set[tuple[int, int]], modules: set[str]) -> str:
    rank, step, module, call, role, _ = key
    if (rank, step) not in steps:
        return f"run {other_name} has no step {step}" + (f" on rank {rank}" if rank else "")
    if module not in modules:
        return f"run {other_name} has no module {module or '<root>'!r}"
    return f"run {other_name} has no record with this call/role/path"


def pair_items(items_a: Iterable[Item], items_b: Iterable[Item]) -> Pairing:
    """Pair by key; pairs follow run A's execution order, unmatched items are listed with why."""
    res = Pairing()
    ia = _index(items_a, "a", res.unmatched)
    ib = _index(items_b, "b", res.unmatched)
    res.count_a, res.count_b = len(ia), len(ib)
    steps_a = {(k[0], k[1]) for k in ia}
    steps_b = {(k[0], k[1]) for k in ib}
    mods_a = {k[2] for k in ia}
    mods_b = {k[2] for k in ib}
    for key, a in ia.items():  # ia is in A's order
        b = ib.get(key)
        if b is None:
            res.unmatched.append(_unmatched(a, "a", _why_missing(key, ib, "B", steps_b, mods_b)))
        else:
            res.pairs.append((a, b))
    for key, b in ib.items():
        if key not in ia:
            res.unmatched.append(_unmatched(b, "b", _why_missing(key, ia, "A", steps_a, mods_a)))
    res.unmatched.sort(key=lambda u: (u.side, u.rank, u.seq))
    return res
