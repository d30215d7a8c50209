"""The shared part of every importer: a read-only ``Run`` built from another tool's dump.

An importer only has to say what the dump holds: a list of ``Found`` items (one per
tensor or value, in the order the tool produced them) and, where the format records
them, token tables. ``ImportedRun`` turns those into ordinary ``Record`` objects, with
float64 statistics and a checksum computed from the data, so everything that reads a
``Run`` (ls, show, diff, convert) works on a dump unchanged.

Nothing is unpickled beyond ``torch.load(weights_only=True)`` (``load_pt``) unless the
user passed ``trust_pickle``; a refusal is an error that names ``--trust-pickle``
rather than a silently missing record. Damaged files are listed in ``problems``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open

from tensortap.version import __version__
from tensortap.errors import CorruptRecordError, RunFormatError, TensortapError, one_line
from tensortap.store import format as fmt
from tensortap.store.reader import Run
from tensortap.store.record import Record
from tensortap.store.safe_torch_load import TRUST_FLAG, load_pt
from tensortap.store.stats import checksum, tensor_stats


@dataclass(frozen=True)
class Source:
    """Where one tensor lives: a file under the dump (relative path) and a key path inside it.

    ``keys`` index into what the file holds: dict keys and list positions for a ``.pt``
    pickle, the tensor name for a safetensors file. An empty ``keys`` means the file
    holds the tensor itself.
    """

    file: str
    keys: tuple[Any, ...] = ()

    def describe(self) -> str:
        inner = "".join(f"[{k!r}]" for k in self.keys)
        return f"{self.file}{inner}"


@dataclass
class Found:
    """One item an importer found in a dump, before it becomes a Record.

    ``source`` is set for tensors whose data is in the dump; ``value`` for non-tensor
    values (kind ``value``); items with neither are metadata only (kind ``stats``,
    e.g. a tensor the tool skipped for size) and carry ``dtype``/``shape`` if known.
    """

    step: int
    module: str
    call: int
    role: str
    path: str
    rank: int = 0
    source: Source | None = None
    is_value: bool = False
    value: Any = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def json_value(value: Any, depth: int = 0) -> Any:
    """A JSON-safe form of a non-tensor value from a dump (mirrors capture's value records)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**62 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)) and depth < 4 and len(value) <= 64:
        return [json_value(v, depth + 1) for v in value]
    if isinstance(value, dict) and depth < 4 and len(value) <= 64 and all(isinstance(k, str) for k in value):
        return {k: json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, torch.Size):
        return list(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return {"type": type(value).__qualname__}


def is_refusal(err: TensortapError) -> bool:
    """True when ``load_pt`` refused a file for needing code execution (not damage)."""
    return TRUST_FLAG in str(err)


def problem_text(err: TensortapError) -> str:
    """What a problem line says about a file that could not be read: a refusal names
    the flag first, so shortening the line never drops it."""
    if is_refusal(err):
        return (f"refused to unpickle (loading it would run code; pass {TRUST_FLAG} if you trust "
                f"the file): {err}")
    return str(err)


class ImportedRun(Run):
    """A dump written by another tool, read in place as a ``Run``.

    Subclasses set ``format_name``/``tool_name``/``family`` and implement ``_scan``
    (return ``Found`` items in production order) and optionally fill
    ``self._token_tables[(rank, step)]``. The layout is validated in ``_check_layout``
    when the run is opened (cheap); the data is read on first use of ``records()``.
    """

    format_name = "?"
    tool_name = "?"
    family = "torch"

    def __init__(self, path: str | Path, trust_pickle: bool = False) -> None:
        # Run.__init__ is not called: there is no run.json; everything it would set is set here.
        self.path = Path(path)
        if not self.path.exists():
            raise RunFormatError(f"{self.path}: no such file or directory")
        self.trust_pickle = trust_pickle
        self.problems: list[str] = []
        self.notes: list[str] = []
        self._records: list[Record] | None = None
        self._handles: dict[tuple[int, str], Any] = {}
        self._tokens: dict[tuple[int, int], dict] | None = None
        self._token_tables: dict[tuple[int, int], dict] = {}
        self._sources: dict[tuple[int, int], Source] = {}
        self._cache_file: str | None = None
        self._cache_obj: Any = None
        self._damaged = 0
        self._model: dict[str, Any] = {}
        self._engine_extra: dict[str, Any] = {}
        self.ranks: list[int] = []
        self._check_layout()
        self.info: dict[str, Any] = self._make_info()

    # -- what subclasses provide ----------------------------------------------------
    def _check_layout(self) -> None:
        """Raise RunFormatError if ``self.path`` is not this format; set ``self.ranks``."""
        raise NotImplementedError

    def _scan(self) -> Iterable[Found]:
        """Every tensor and value in the dump, in the order the tool produced them.

        May be a generator: each item is turned into a record as soon as it is yielded,
        while the file it came from is still the cached one (a pass file is read once).
        """
        raise NotImplementedError

    def _read_file(self, rel: str) -> Any:
        """Load one file of the dump (``.pt`` through ``load_pt``; others by subclasses)."""
        p = self.path / rel
        if rel.endswith(".safetensors"):
            try:
                with safe_open(str(p), framework="pt", device="cpu") as h:
                    return {k: h.get_tensor(k) for k in h.keys()}
            except Exception as e:  # noqa: BLE001 - safetensors raises its own types
                raise TensortapError(f"{p}: unreadable safetensors file ({one_line(str(e), 200)})") from None
        return load_pt(p, trust_pickle=self.trust_pickle)

    def data_range(self, rec: Record) -> list[tuple[Path, int, int]]:
        """Nothing to read ahead: another tool's files are loaded whole, through ``load``."""
        return []

    # -- metadata -------------------------------------------------------------------
    def _make_info(self) -> dict[str, Any]:
        return {
            "format_version": fmt.FORMAT_VERSION,
            "tool": self.tool_name,
            "imported": {"format": self.format_name, "source": str(self.path),
                         "reader": f"tensortap {__version__}"},
            "model": self._model,
            "engine": {"name": self.tool_name, "family": self.family, **self._engine_extra},
            "capture": {},
            "parallel": {"rank": 0, "world_size": max(len(self.ranks), 1)},
            "status": "complete",
            "reason": None,
            "warnings": [],
        }

    @property
    def status(self) -> str:
        self._load_manifests()
        return "incomplete" if self._damaged else "complete"

    @property
    def reason(self) -> str | None:
        self._load_manifests()
        if self._damaged:
            return f"{self._damaged} item(s) of the dump could not be read (see problems)"
        return None

    @property
    def warnings(self) -> list[str]:
        return []

    def rank_status(self) -> dict[int, dict]:
        st = {"status": self.status, "reason": self.reason}
        return {r: dict(st) for r in self.ranks}

    # -- records --------------------------------------------------------------------
    def _load_manifests(self) -> list[Record]:
        if self._records is not None:
            return self._records
        records: list[Record] = []
        seqs: dict[int, int] = {}
        for f in self._scan():
            seq = seqs.get(f.rank, 0)
            seqs[f.rank] = seq + 1
            records.append(self._to_record(f, seq))
        self._drop_cache()
        records.sort(key=lambda r: (r.rank, r.seq))
        self._records = records
        self.ranks = sorted(set(self.ranks) | {r.rank for r in records})
        self.info["parallel"]["world_size"] = max(len(self.ranks), 1)
        return records

    def _to_record(self, f: Found, seq: int) -> Record:
        base = dict(step=f.step, module=f.module, call=f.call, role=f.role, path=f.path,
                    seq=seq, rank=f.rank)
        if f.is_value:
            return Record(kind="value", value=json_value(f.value), extra=f.extra, **base)
        if f.source is None:
            return Record(kind="stats", dtype=f.dtype, shape=f.shape, device=f.device,
                          extra=f.extra, **base)
        extra = {**f.extra, "source": f.source.describe()}
        try:
            t = self._fetch(f.source)
        except TensortapError as e:
            # A refused pickle (it would run code) is listed as a problem naming
            # --trust-pickle, like a damaged file: the rest of the dump stays readable,
            # and the record stays visible, without data.
            return self._damaged_record(base, f, extra, problem_text(e))
        if not isinstance(t, torch.Tensor):
            if t is None or isinstance(t, (bool, int, float, str, list, tuple)):
                return Record(kind="value", value=json_value(t), extra=extra, **base)
            return self._damaged_record(base, f, extra, f"expected a tensor, found {type(t).__qualname__}")
        t = t.detach()
        self._sources[(f.rank, seq)] = f.source
        return Record(kind="tensor", dtype=dtype_name(t.dtype), shape=tuple(t.shape),
                      device=f.device, stats=tensor_stats(t), shard=f.source.file,
                      tensor=repr(f.source.keys), checksum=checksum(t), extra=extra, **base)

    def _damaged_record(self, base: dict, f: Found, extra: dict, why: str) -> Record:
        self._damaged += 1
        self.problems.append(one_line(f"{f.source.describe() if f.source else '?'}: {why}", 400))
        return Record(kind="stats", dtype=f.dtype, shape=f.shape, device=f.device,
                      extra={**extra, "error": one_line(why, 300)}, **base)

    # -- data -------------------------------------------------------------------------
    def _fetch(self, src: Source) -> Any:
        """The object at ``src``; the last file read stays cached (pass dumps hold many)."""
        if self._cache_file != src.file:
            self._drop_cache()
            obj = self._read_file(src.file)
            self._cache_file, self._cache_obj = src.file, obj
        obj = self._cache_obj
        for k in src.keys:
            try:
                obj = obj[k]
            except (KeyError, IndexError, TypeError):
                raise TensortapError(f"{self.path / src.file}: no entry {k!r} "
                                     f"(the file changed since it was listed?)") from None
        return obj

    def _drop_cache(self) -> None:
        self._cache_file, self._cache_obj = None, None

    def shard_path(self, rec: Record) -> Path:
        return self.path / str(rec.shard)

    def load(self, rec: Record, verify: bool = True) -> torch.Tensor:
        """The record's tensor, read from the dump and checked against its listing."""
        if not rec.has_data:
            why = "a non-tensor value" if rec.kind == "value" else "metadata only (no tensor data in the dump)"
            raise RunFormatError(f"record {rec.label} holds {why}")
        self._load_manifests()
        src = self._sources.get((rec.rank, rec.seq))
        if src is None:
            raise RunFormatError(f"record {rec.label} does not belong to this run ({self.path})")
        where = f"{self.path / src.file} (record {rec.label})"
        t = self._fetch(src)
        if not isinstance(t, torch.Tensor):
            raise CorruptRecordError(f"{where}: no longer holds a tensor")
        t = t.detach()
        if rec.shape is not None and tuple(t.shape) != tuple(rec.shape):
            raise CorruptRecordError(f"{where}: shape {tuple(t.shape)} != listed {rec.shape}")
        if rec.dtype is not None and dtype_name(t.dtype) != rec.dtype:
            raise CorruptRecordError(f"{where}: dtype {t.dtype} != listed {rec.dtype}")
        if verify and rec.checksum and checksum(t) != rec.checksum:
            raise CorruptRecordError(f"{where}: data changed since the dump was listed")
        return t.contiguous()

    def tokens(self, step: int, rank: int = 0) -> dict | None:
        self._load_manifests()
        return self._token_tables.get((rank, step))

    def close(self) -> None:
        self._drop_cache()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, format={self.format_name!r})"


# -- helpers shared by importers ----------------------------------------------------

def listdir(path: Path) -> list[os.DirEntry]:
    """Entries of a directory sorted by name; an unreadable one is a clear error."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise RunFormatError(f"{path}: cannot list directory ({e.strerror or e})") from None


def natural_key(name: str) -> tuple:
    """Sort key that orders ``x_2`` before ``x_10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def flatten_loaded(obj: Any, keys: tuple = (), path: str = "", depth: int = 0
                   ) -> Iterable[tuple[str, tuple, Any]]:
    """``(path, keys, leaf)`` for a loaded container, paths as tensortap writes them.

    Lists/tuples give ``0``, ``1``; dict keys by name (``.`` and ``\\`` escaped as in
    capture); nesting joined with ``.``. Used for values a tool saved as one container.
    """
    def join(p: str, k: str) -> str:
        return f"{p}.{k}" if p else k

    if isinstance(obj, (list, tuple)) and depth < 8:
        for i, v in enumerate(obj):
            yield from flatten_loaded(v, keys + (i,), join(path, str(i)), depth + 1)
        return
    if isinstance(obj, dict) and depth < 8:
        for k, v in obj.items():
            yield from flatten_loaded(v, keys + (k,), join(path, escape_key(str(k))), depth + 1)
        return
    yield path, keys, obj


def escape_key(key: str) -> str:
    """A dict key as a path component, escaped the way capture's flatten does it."""
    out = []
    for ch in key:
        if ch in "\\.":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
