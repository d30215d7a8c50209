"""The record: one captured tensor (or non-tensor value) and its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tensortap.errors import one_line


@dataclass(frozen=True)
class TensorStats:
    """Float64 summary statistics of one tensor, computed over every element."""

    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    absmax: float | None
    l2: float | None
    nan: int
    inf: int
    zero: int
    numel: int

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy cost ~80 µs per record, in the
        # hook of a stats-mode capture.
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": self.std,
                "absmax": self.absmax, "l2": self.l2, "nan": self.nan, "inf": self.inf,
                "zero": self.zero, "numel": self.numel}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorStats":
        def f(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        return cls(
            min=f("min"), max=f("max"), mean=f("mean"), std=f("std"),
            absmax=f("absmax"), l2=f("l2"),
            nan=int(d.get("nan", 0)), inf=int(d.get("inf", 0)),
            zero=int(d.get("zero", 0)), numel=int(d.get("numel", 0)),
        )


RecordKey = tuple[int, str, int, str, str]


@dataclass(frozen=True)
class Record:
    """One captured value.

    The key ``(step, module, call, role, path)`` names it; ``seq`` orders records of
    one rank by capture time. ``kind`` is ``tensor`` (data stored), ``stats`` (tensor
    seen, only its statistics stored: over ``max_numel`` or stats mode), or ``value``
    (a non-tensor argument such as an int or None, kept as JSON in ``value``).
    """

    step: int
    module: str
    call: int
    role: str
    path: str
    seq: int
    kind: str
    rank: int = 0
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    device: str | None = None
    stats: TensorStats | None = None
    shard: str | None = None
    tensor: str | None = None
    checksum: str | None = None
    value: Any = None
    sketch: tuple[float, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> RecordKey:
        return (self.step, self.module, self.call, self.role, self.path)

    @property
    def has_data(self) -> bool:
        return self.kind == "tensor" and self.shard is not None

    @property
    def label(self) -> str:
        """A short human name: ``module[call].role.path@step``.

        Control characters in names are shown as escapes: labels go into one-line
        messages, and a hostile run must not be able to split them or drive a terminal.
        """
        path = f".{self.path}" if self.path else ""
        name = self.module or "<root>"
        return one_line(f"{name}[{self.call}].{self.role}{path}@{self.step}", 500)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "step": self.step, "module": self.module, "call": self.call,
            "role": self.role, "path": self.path, "seq": self.seq, "kind": self.kind,
        }
        if self.dtype is not None:
            d["dtype"] = self.dtype
        if self.shape is not None:
            d["shape"] = list(self.shape)
        if self.device is not None:
            d["device"] = self.device
        if self.stats is not None:
            d["stats"] = self.stats.to_json()
        if self.shard is not None:
            d["shard"] = self.shard
            d["tensor"] = self.tensor
            d["checksum"] = self.checksum
        if self.kind == "value":
            d["value"] = self.value
        if self.sketch is not None:
            d["sketch"] = list(self.sketch)
        if self.extra:
            d["extra"] = self.extra
        return d
