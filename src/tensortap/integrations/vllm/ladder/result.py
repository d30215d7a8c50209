"""The ladder's result: one outcome per rung, the explanation, and the JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tensortap.integrations.vllm.ladder.compare import AnchorLevel, LogprobLevel, TokenLevel
from tensortap.integrations.vllm.ladder.explain import Explanation
from tensortap.integrations.vllm.ladder.rungs import Rung

SCHEMA = "tensortap.vllm_ladder"
SCHEMA_VERSION = 1

# Rung statuses.
REFERENCE, AGREE, DIFFERS, ERROR, UNAVAILABLE = "reference", "agree", "differs", "error", "unavailable"


@dataclass
class RungOutcome:
    """What one rung did and how it compares with the reference."""

    rung: Rung
    status: str
    settings: str = ""
    """The rung's vLLM settings on this machine (rungs.Rung.settings)."""
    switches: list[str] = field(default_factory=list)
    """Switches the rung really had on (``cache`` only when its graph came from the cache)."""
    tokens: TokenLevel | None = None
    logprobs: LogprobLevel | None = None
    anchors: AnchorLevel | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    time_s: float = 0.0
    engine_start_s: float | None = None
    generate_s: float | None = None
    cache: str | None = None
    """vLLM compile cache: ``off``, ``hit``, ``miss`` (compiled and saved), ``unused``."""
    engine: dict[str, Any] = field(default_factory=dict)
    token_ids: list[list[int]] = field(default_factory=list)
    logprob_values: list[list[float | None]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    run_dir: str | None = None
    trace_dir: str | None = None
    log: str | None = None

    @property
    def differs(self) -> bool:
        return self.status == DIFFERS

    @property
    def compared(self) -> bool:
        return self.status in (AGREE, DIFFERS)

    def levels(self) -> list[str]:
        """The comparison levels this rung got (tokens, logprobs, anchors)."""
        if not self.compared:
            return []
        out = ["tokens", "logprobs"]
        if self.anchors is not None and self.anchors.compared:
            out.append("anchors")
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "name": self.rung.name, "rung": self.rung.to_dict(), "settings": self.settings,
            "status": self.status,
            "switches": self.switches, "levels": self.levels(),
            "tokens": self.tokens.to_dict() if self.tokens else None,
            "logprobs": self.logprobs.to_dict() if self.logprobs else None,
            "anchors": self.anchors.to_dict() if self.anchors else None,
            "error": self.error, "notes": self.notes,
            "time_s": self.time_s, "engine_start_s": self.engine_start_s, "generate_s": self.generate_s,
            "cache": self.cache, "engine": self.engine,
            "token_ids": self.token_ids, "logprob_values": self.logprob_values, "texts": self.texts,
            "run_dir": self.run_dir, "trace_dir": self.trace_dir, "log": self.log,
        })


@dataclass
class LadderResult:
    """Every rung's outcome. ``exit_code``: 0 all agree, 1 a rung differs, 2 a rung failed."""

    model: str
    prompts: list[str]
    max_new_tokens: int
    dtype: str | None
    out: str
    platform: str
    capture: bool
    rungs: list[RungOutcome]
    explanation: Explanation
    total_s: float
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def first_differing(self) -> RungOutcome | None:
        """The first rung, in ladder order, whose result differs from the reference."""
        return next((r for r in self.rungs if r.differs), None)

    @property
    def verdict(self) -> str:
        if self.first_differing is not None:
            return "differs"
        if any(r.status == ERROR for r in self.rungs):
            return "error"
        return "agree"

    @property
    def exit_code(self) -> int:
        return {"agree": 0, "differs": 1}.get(self.verdict, 2)

    def rung(self, name: str) -> RungOutcome:
        for r in self.rungs:
            if r.rung.name == name:
                return r
        raise KeyError(name)

    def summary(self) -> str:
        """One line: the verdict, the first differing rung and where it shows."""
        first = self.first_differing
        if first is None:
            failed = [r.rung.name for r in self.rungs if r.status == ERROR]
            if failed:
                return f"ERROR: rung(s) {', '.join(failed)} failed; the others agree with eager"
            return "AGREE: every rung matches the eager reference"
        where = []
        if first.tokens and not first.tokens.equal:
            prompt, pos = first.tokens.first
            where.append(f"tokens differ from prompt {prompt} position {pos}")
        if first.logprobs and first.logprobs.differs:
            where.append(f"logprobs differ by {first.logprobs.max_abs_diff:.3g}")
        if first.anchors and first.anchors.first_anchor:
            where.append(f"first divergent anchor {first.anchors.first_anchor} (step {first.anchors.step})")
        return f"DIFFERS: first at rung {first.rung.name!r}: " + "; ".join(where)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_differing
        return _clean({
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict, "exit_code": self.exit_code, "summary": self.summary(),
            "first_differing_rung": first.rung.name if first else None,
            "first_divergent_anchor": first.anchors.first_anchor if first and first.anchors else None,
            "explanation": self.explanation.to_dict(),
            "model": self.model, "prompts": self.prompts, "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype, "out": self.out, "platform": self.platform, "capture": self.capture,
            "total_s": self.total_s, "notes": self.notes, "settings": self.settings,
            "rungs": [r.to_dict() for r in self.rungs],
        })

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_html(self, path: str) -> str:
        from tensortap.integrations.vllm.ladder.report import write_html

        return str(write_html(self, path))


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become strings (``allow_nan=False`` documents stay valid)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
