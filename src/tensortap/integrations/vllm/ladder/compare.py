"""Compare one rung with the reference at three levels: tokens, logprobs, anchors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Default limits on |logprob difference| of the chosen tokens, by model dtype. Measured on
# the tiny fp32 Llama (CPU): eager vs compiled differ by ~1e-6; half-precision engines by
# up to a few 1e-3 from reordered reductions alone.
LOGPROB_ATOL = {"float32": 1e-4, "float64": 1e-8, "bfloat16": 5e-2, "float16": 2e-2}


def default_logprob_atol(dtype: str | None) -> float:
    return LOGPROB_ATOL.get((dtype or "").removeprefix("torch."), 5e-2)


@dataclass
class TokenLevel:
    """Generated token ids: the first differing position of each prompt (None: equal)."""

    first_diff: list[int | None]

    @property
    def equal(self) -> bool:
        return all(p is None for p in self.first_diff)

    @property
    def first(self) -> tuple[int, int] | None:
        """``(prompt, position)`` of the earliest difference over all prompts."""
        hits = [(pos, i) for i, pos in enumerate(self.first_diff) if pos is not None]
        if not hits:
            return None
        pos, i = min(hits)
        return i, pos

    def to_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "first_diff": self.first_diff,
                "first": list(self.first) if self.first else None}


@dataclass
class LogprobLevel:
    """Chosen-token logprobs, compared only where both rungs chose the same tokens so far."""

    max_abs_diff: float | None
    where: tuple[int, int] | None
    """``(prompt, position)`` of the largest difference."""
    atol: float
    compared: int

    @property
    def differs(self) -> bool:
        return self.max_abs_diff is not None and not (self.max_abs_diff <= self.atol)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["differs"] = self.differs
        return d


@dataclass
class AnchorLevel:
    """Intermediate anchors (tt.diff through the vLLM anchor adapter), or why not compared."""

    compared: bool
    reason: str | None = None
    verdict: str | None = None
    first_anchor: str | None = None
    step: int | None = None
    metric: str | None = None
    value: float | None = None
    limit: float | None = None
    message: str | None = None
    pairs: int = 0
    max_rel_l2: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return self.compared and self.verdict == "diverged"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["differs"] = self.differs
        return d


def compare_tokens(ref: list[list[int]], got: list[list[int]]) -> TokenLevel:
    out: list[int | None] = []
    for a, b in zip(ref, got):
        pos = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if pos is None and len(a) != len(b):
            pos = min(len(a), len(b))
        out.append(pos)
    return TokenLevel(out)


def compare_logprobs(ref: list[list[float | None]], got: list[list[float | None]], tokens: TokenLevel,
                     atol: float) -> LogprobLevel:
    best: float | None = None
    where = None
    n = 0
    for i, (a, b) in enumerate(zip(ref, got)):
        # Past the first differing token the two rungs score different tokens.
        stop = tokens.first_diff[i] if tokens.first_diff[i] is not None else min(len(a), len(b))
        for pos in range(stop):
            x, y = a[pos], b[pos]
            if x is None or y is None:
                continue
            d = abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
            n += 1
            if best is None or d > best:
                best, where = d, (i, pos)
    return LogprobLevel(best, where, atol, n)


def capture_problem(capture: dict[str, Any] | None, who: str) -> str | None:
    """Why a rung's capture cannot be compared (None when it can)."""
    if capture is None:
        return "capture off (--no-capture)"
    if capture.get("refused"):
        return f"{who}: taps could not be attached ({capture['refused']})"
    never = capture.get("never_fired") or []
    if never:
        planned = capture.get("planned") or []
        shown = ", ".join(never[:4]) + (" …" if len(never) > 4 else "")
        return (f"{who}: hooks did not fire under this configuration "
                f"({len(never)} of {len(planned)} planned modules never fired: {shown})")
    if capture.get("status") != "complete":
        return f"{who}: capture incomplete ({capture.get('reason')})"
    if not capture.get("records"):
        return f"{who}: capture recorded nothing"
    return None


def compare_anchors(ref_capture: dict[str, Any] | None, capture: dict[str, Any] | None) -> AnchorLevel:
    """First divergent anchor between the reference's run and this rung's run."""
    problem = capture_problem(capture, "this rung")
    if problem is None:
        problem = capture_problem(ref_capture, "the reference rung")
    if problem is None and int(capture.get("records") or 0) < int(ref_capture.get("records") or 0):
        # Every planned module fired at least once, yet records are missing: some calls
        # ran without their taps (e.g. a replayed graph). A partial capture could hide
        # the very anchor where the rung diverges.
        problem = (f"this rung: taps recorded {capture.get('records')} tensors, the reference "
                   f"{ref_capture.get('records')}: some calls ran without firing their hooks")
    if problem is not None:
        return AnchorLevel(False, reason=problem)
    from tensortap.compare.api import diff
    from tensortap.compare.anchor_mapping import AnchorMapping
    from tensortap.store.reader import Run

    run_a, run_b = Run(ref_capture["run"]), Run(capture["run"])
    try:
        report = diff(run_a, run_b, mapping=AnchorMapping(run_a, run_b))
    except Exception as e:  # noqa: BLE001 - one rung's unreadable run must not end the ladder
        return AnchorLevel(False, reason=f"diff failed: {type(e).__name__}: {e}")
    rels = [r.rel_l2 for r in report.rows if getattr(r, "rel_l2", None) is not None]
    level = AnchorLevel(True, verdict=report.verdict, pairs=len(report.rows),
                        max_rel_l2=max(rels) if rels else None, warnings=list(report.warnings))
    fd = report.first_divergence
    if fd is not None:
        level.first_anchor, level.step, level.metric = fd.module, fd.step, fd.metric
        level.value = fd.value if isinstance(fd.value, (int, float)) else None
        level.limit = fd.limit if isinstance(fd.limit, (int, float)) else None
        level.message = fd.message
    elif report.verdict == "inconclusive":
        level.reason = report.summary_line
    return level
