"""What a diff returns: one row per compared pair, the first divergence, and the report.

``DiffReport.to_dict()`` is the JSON document ``tensortap diff --json`` prints (schema
in docs/diff.md); ``to_json()`` is that document as a string. Non-finite numbers are
``null`` in JSON (e.g. ``sqnr_db`` of identical tensors, which is +inf).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tensortap.compare.pairing import Unmatched
from tensortap.errors import TensortapError

SCHEMA_VERSION = 1

STATUSES = ("ok", "diverged", "mismatch", "error")
"""``ok``: within tolerance; ``diverged``: beyond it; ``mismatch``: cannot be compared
(shape, dtype kind, tensor vs value); ``error``: data unreadable (corrupt shard)."""

ORIGINS = ("introduced", "carried", "amplified", "unknown")
"""For diverged outputs (compare.judge): error beyond what the inputs (and, for a
container, its children) carry and the dtype explains (``introduced``); integer inputs such as token ids already differ (``carried``). With a
floor run: inputs diverged and the error grew at least 10x (``amplified``) or not
(``carried``), or inputs not captured (``unknown``)."""


@dataclass
class DiffRow:
    """One compared pair, in run A's execution order."""

    index: int
    rank: int
    step: int
    module: str
    call: int
    role: str
    path: str
    seq_a: int
    seq_b: int
    module_b: str
    path_b: str
    kind: str
    """``tensor`` (full data), ``estimate`` (statistics/sketches), ``value`` (non-tensor)."""
    status: str = "ok"
    estimated: bool = False
    reason: str | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    numel: int | None = None
    aligned: str | None = None
    is_logits: bool = False
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    rel_diff: float | None = None
    sqnr_db: float | None = None
    allclose_fail_frac: float | None = None
    nan_mismatch: int | None = None
    inf_mismatch: int | None = None
    worst_index: list[int] | None = None
    worst_token: list[int] | None = None
    worst_a: float | None = None
    worst_b: float | None = None
    top1_agree: float | None = None
    kl: float | None = None
    atol: float | None = None
    rtol: float | None = None
    tol_source: str | None = None
    floor_rel_l2: float | None = None
    floor_k: float | None = None
    limit: float | None = None
    """The largest rel_l2 this pair may have (tolerance, or floor rule, as a relative error)."""
    ratio: float | None = None
    """Error / allowed error: above 1 is diverged."""
    tripped: str | None = None
    """The metric that decided a non-ok status: rel_l2, nan_inf, exact, value, shape, dtype, kind."""
    input_rel_l2: float | None = None
    amplification: float | None = None
    origin: str | None = None
    raw_a: str | None = None
    """Run A's own name for this pair when a mapping renamed it (an anchor's source records)."""
    raw_b: str | None = None
    token_rel_l2: float | None = None
    """Relative error of the worst token row, ``||a_t - b_t|| / ||a_t||`` (compare.rows)."""
    worst_row: list[int] | None = None
    """That row: ``[request, position]`` when rows are tokens, else ``[row index]``."""
    worst_row_is_token: bool = False
    carried: float | None = None
    """The worst-token error this row's sources already carry (compare.noise)."""
    carried_from: str | None = None
    """Where ``carried`` was read: ``inputs``, ``children`` (a container's nested modules),
    ``feeds`` (anchors), ``upstream`` / ``upstream (estimates)`` (rows
    earlier in the step, when inputs were not captured), ``earlier steps``, ``none``."""
    own_noise: float | None = None
    """The rounding error the noise model allows this row's own arithmetic."""
    growth: float | None = None
    """``token_rel_l2 / max(carried, own_noise)``: how much error grows here (``--top``)."""
    row_errors: Any = field(default=None, repr=False, compare=False)
    """Per-token errors (compare.rows.RowErrors), kept in memory only: not in JSON."""

    @property
    def name(self) -> str:
        """``module[call].role.path@step`` for messages."""
        p = f".{self.path}" if self.path else ""
        return f"{self.module or '<root>'}[{self.call}].{self.role}{p}@{self.step}"

    @property
    def worst_token_key(self) -> tuple[int, int] | None:
        """``(request, position)`` of the worst row when rows are tokens, else None."""
        if self.worst_row_is_token and self.worst_row and len(self.worst_row) == 2:
            return self.worst_row[0], self.worst_row[1]
        return None

    @property
    def failed(self) -> bool:
        return self.status in ("diverged", "mismatch")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _finite(getattr(self, f.name)) for f in fields(self) if f.name not in _IN_MEMORY}


_IN_MEMORY = {"row_errors"}


@dataclass
class Divergence:
    """The first pair (in run A's execution order) that diverged, and why."""

    module: str
    step: int
    call: int
    role: str
    path: str
    rank: int
    seq: int | None
    status: str
    metric: str
    """What tripped: rel_l2, nan_inf, exact, value, shape, dtype, kind, or unmatched (--strict)."""
    value: Any
    limit: Any
    origin: str | None = None
    amplification: float | None = None
    row: int | None = None
    """Index into ``rows`` (None for an unmatched record under --strict)."""
    estimated: bool = False
    message: str = ""
    token: dict[str, Any] | None = None
    """The worst token of the diverging tensor: ``{request, position, token_id, text}``
    (text when the model folder's tokenizer is at hand)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


@dataclass
class DiffReport:
    """The result of ``tt.diff``. ``verdict`` is ``agree``, ``diverged`` or ``inconclusive``."""

    run_a: str
    run_b: str
    floor: str | None
    rows: list[DiffRow]
    unmatched: list[Unmatched]
    first_divergence: Divergence | None
    verdict: str
    summary_line: str
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    peak_loaded_bytes: int = 0
    """Largest number of tensor bytes held at once while comparing (the memory bound)."""
    top_growth: list[dict[str, Any]] = field(default_factory=list)
    """The outputs whose error grows most (compare.ranking), largest first."""

    @property
    def exit_code(self) -> int:
        """0 agree, 1 diverged, 2 inconclusive (nothing diverged but something could not be compared)."""
        return {"agree": 0, "diverged": 1}.get(self.verdict, 2)

    @property
    def diverged(self) -> bool:
        return self.verdict == "diverged"

    def to_dict(self) -> dict[str, Any]:
        """The ``diff --json`` document (a JSON-serialisable dict)."""
        return {
            "schema": "tensortap.diff",
            "schema_version": SCHEMA_VERSION,
            "run_a": self.run_a,
            "run_b": self.run_b,
            "floor": self.floor,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "summary": self.summary_line,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "counts": dict(self.counts),
            "steps": list(self.steps),
            "warnings": list(self.warnings),
            "settings": self.settings,
            "top_growth": [{k: _finite(v) for k, v in e.items()} for e in self.top_growth],
            "rows": [r.to_dict() for r in self.rows],
            "unmatched": [u.to_json() for u in self.unmatched],
        }

    def to_json(self, indent: int | None = None) -> str:
        """``to_dict()`` as a JSON string (strict JSON: no NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (works offline) and return its path."""
        # The one reference upward: a convenience so `tt.diff(...).to_html()` works. The
        # renderer only reads to_dict(); compare's logic never depends on report.
        from tensortap.report.diff_html import write_html

        return write_html(self.to_dict(), path)

    def __rich__(self):
        """``rich.print(report)``: the table, notes and verdict ``tensortap diff`` prints."""
        from tensortap.report.diff_table import render

        return render(self)

    def _repr_html_(self) -> str:
        """Jupyter: the self-contained HTML report, inline."""
        from tensortap.report.diff_html import render_html

        return render_html(self.to_dict())

    def to_dataframe(self):
        """The rows as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise TensortapError("DiffReport.to_dataframe() needs pandas: pip install pandas "
                                 "(or use report.to_dict()['rows'])") from None
        return pd.DataFrame([r.to_dict() for r in self.rows])

    def __repr__(self) -> str:
        return f"DiffReport({self.verdict}: {self.summary_line})"


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v
