"""Name the smallest set of switches that changes the result.

A candidate set ``S`` of switches explains the ladder when, for every rung that ran,
the rung differs from the reference exactly when it had every switch of ``S`` on. Single
switches are tried first, then pairs (interaction bugs such as vllm#49844: Inductor plus
CUDA graphs wrong, either alone right), then triples. Several sets of the smallest size
can fit the same rungs; then the rungs that would tell them apart are suggested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Iterable

from tensortap.integrations.vllm.ladder.rungs import RUNGS, SWITCHES

SWITCH_TEXT = {
    "compile": "Dynamo graph capture (torch.compile)",
    "inductor": "Inductor",
    "cache": "a graph loaded from vLLM's compile cache",
    "cudagraph": "CUDA graphs",
}


@dataclass
class Explanation:
    """What the ladder's pattern of agreeing and differing rungs points at."""

    kind: str
    """``agree`` (nothing differs), ``explained`` (one smallest set), ``ambiguous`` (several),
    ``unexplained`` (no set of up to three switches fits: nondeterminism, or a difference
    that depends on something else than these switches), ``none`` (nothing to compare)."""
    sets: list[list[str]] = field(default_factory=list)
    suggest: list[str] = field(default_factory=list)
    """Rungs not yet run that would narrow an ambiguous answer down."""
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sets": self.sets, "suggest": self.suggest, "text": self.text}


def _fits(candidate: frozenset[str], observed: list[tuple[frozenset[str], bool]]) -> bool:
    return all((candidate <= switches) == differs for switches, differs in observed)


def _describe(s: Iterable[str]) -> str:
    return " + ".join(SWITCH_TEXT.get(x, x) for x in s)


def explain(observed: list[tuple[str, frozenset[str], bool]], available: Iterable[str] = ()) -> Explanation:
    """``observed``: ``(rung, effective switches, differs)`` for every compared rung.

    ``available``: rungs this machine could still run (for suggestions).
    """
    if not observed:
        return Explanation("none", text="no rung besides the reference could be compared")
    pairs = [(sw, d) for _, sw, d in observed]
    if not any(d for _, d in pairs):
        return Explanation("agree", text="every rung agrees with the reference")
    for size in (1, 2, 3):
        fits = [frozenset(c) for c in combinations(SWITCHES, size) if _fits(frozenset(c), pairs)]
        if fits:
            break
    else:
        differing = ", ".join(n for n, _, d in observed if d)
        return Explanation("unexplained", text=(
            f"no set of switches explains which rungs differ ({differing}); the difference may be "
            "nondeterministic or depend on something the ladder does not switch"))
    sets = [sorted(f, key=SWITCHES.index) for f in fits]
    if len(fits) == 1:
        s = sets[0]
        what = "switch" if len(s) == 1 else "switches, together"
        return Explanation("explained", sets, text=f"smallest change: {' + '.join(s)} ({what}: {_describe(s)})")
    ran = {n for n, _, _ in observed}
    suggest = []
    for name in available:
        rung = RUNGS.get(name)
        if rung is None or name in ran:
            continue
        verdicts = {f <= rung.switches for f in fits}
        if len(verdicts) > 1:  # the candidates predict different outcomes for this rung
            suggest.append(name)
    options = " or ".join("+".join(s) for s in sets)
    text = f"smallest change: {options} (these rungs cannot tell them apart"
    text += f"; add {','.join(suggest)} to --rungs to decide)" if suggest else ")"
    return Explanation("ambiguous", sets, suggest, text)
