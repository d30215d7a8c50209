"""``verify``: check that everything a run says is true.

Checks, per rank:
- every shard in ``data/``: a regular file whose safetensors structure is sound
  (shardcheck: header length, header JSON, dtypes, shapes against byte counts, offsets
  in bounds, no overlap, no gap);
- every manifest line parses into a valid record (a torn last line is a warning: it is
  what a crash mid-append leaves, and readers ignore it);
- every record with data: its shard exists, names its tensor, agrees on dtype and
  shape, and the bytes match the record's checksum (through ``Run.load``, the same
  path every reader uses);
- shards no record points to (an error in a complete run; a warning in an incomplete
  one, where a crash between writing a shard and committing its lines leaves them);
- leftover temporary files and unknown files (warnings).

Errors mean data is wrong or missing; warnings mean the run is usable as it stands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tensortap.errors import CorruptRecordError, RunFormatError, one_line
from tensortap.store import format as fmt
from tensortap.store.reader import Run, read_manifest
from tensortap.store.record import Record
from tensortap.store.shardcheck import TORCH_TO_ST, ShardCheck, check_shard

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding: how bad, what kind, where (file, record), and a one-line message."""

    severity: str
    kind: str
    """checksum, shape, dtype, shard, missing-shard, missing-tensor, manifest, torn-line,
    duplicate, unreferenced-shard, temp-file, unknown-file, no-checksum, status."""
    message: str
    file: str | None = None
    record: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = " ".join(x for x in (self.file, f"[{self.record}]" if self.record else None) if x)
        return one_line(f"{self.severity}: {self.kind}: {where + ': ' if where else ''}{self.message}")


@dataclass
class VerifyResult:
    """Everything ``verify_run`` found. ``ok`` is True when there is no error."""

    run: str
    status: str
    reason: str | None
    ranks: list[int]
    records: int = 0
    records_with_data: int = 0
    records_verified: int = 0
    shards: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "ok": self.ok, "status": self.status, "reason": self.reason,
            "ranks": self.ranks, "records": self.records,
            "records_with_data": self.records_with_data, "records_verified": self.records_verified,
            "shards": self.shards, "errors": len(self.errors), "warnings": len(self.warnings),
            "problems": [p.to_json() for p in self.problems],
        }


def verify_run(path: str | Path) -> VerifyResult:
    """Verify the run at ``path``. Raises RunFormatError only when it is not a readable run
    (no run.json, unknown version...); everything else is reported in the result."""
    run = Run(path)
    try:
        result = VerifyResult(run=str(run.path), status=run.status, reason=run.reason, ranks=list(run.ranks))
        statuses = run.rank_status()
        for rank in run.ranks:
            _verify_rank(run, rank, statuses.get(rank, {}).get("status") == "complete", result)
        return result
    finally:
        run.close()


def _verify_rank(run: Run, rank: int, complete: bool, result: VerifyResult) -> None:
    add = result.problems.append
    rdir = fmt.rank_dir(run.path, rank)
    shards = _check_data_dir(rdir / fmt.DATA_DIR, add)
    result.shards += len(shards)

    mpath = rdir / fmt.MANIFEST
    records: list[Record] = []
    if mpath.exists():
        got = read_manifest(mpath, rank)
        if got.error:
            add(Problem(ERROR, "manifest", got.error, str(mpath)))
        for line, why in got.bad_lines:
            add(Problem(ERROR, "manifest", f"line {line}: {why}", f"{mpath}:{line}"))
        if got.torn_bytes:
            add(Problem(WARNING, "torn-line", f"unterminated last line ({got.torn_bytes} bytes) "
                        "ignored: a write cut short by a crash", str(mpath)))
        records = got.records
    result.records += len(records)

    seen_seq: dict[int, Record] = {}
    seen_key: set = set()
    used: set[str] = set()
    for rec in records:
        if rec.seq in seen_seq:
            add(Problem(ERROR, "duplicate", f"seq {rec.seq} is also claimed by "
                        f"{seen_seq[rec.seq].label}", str(mpath), rec.label))
        seen_seq.setdefault(rec.seq, rec)
        if rec.key in seen_key:
            add(Problem(WARNING, "duplicate", "another record has the same key", str(mpath), rec.label))
        seen_key.add(rec.key)
        if rec.kind == "tensor" and rec.shard is None:
            add(Problem(ERROR, "missing-shard", "tensor record names no shard", str(mpath), rec.label))
            continue
        if not rec.has_data:
            continue
        result.records_with_data += 1
        used.add(rec.shard)
        if _verify_record(run, rec, shards, add):
            result.records_verified += 1

    for name in sorted(set(shards) - used):
        add(Problem(ERROR if complete else WARNING, "unreferenced-shard",
                    "no record points to this shard" + (
                        "" if complete else " (expected after a crash between writing a shard "
                        "and committing its records)"),
                    str(rdir / fmt.DATA_DIR / name)))


def _check_data_dir(data: Path, add) -> dict[str, ShardCheck | None]:
    """Structure of every file in ``data/``. Value None: the name is a shard's but the
    entry is not a regular file (already reported)."""
    shards: dict[str, ShardCheck | None] = {}
    if not data.is_dir():
        return shards
    for p in sorted(data.iterdir()):
        name = p.name
        if fmt.is_valid_shard_name(name):
            if p.is_symlink() or not p.is_file():
                what = "a symbolic link" if p.is_symlink() else "not a regular file"
                add(Problem(ERROR, "shard", f"shard is {what}", str(p)))
                shards[name] = None
                continue
            chk = check_shard(p)
            for msg in chk.problems:
                add(Problem(ERROR, "shard", msg, str(p)))
            shards[name] = chk
        elif name.startswith(".") and name.endswith(".tmp"):
            add(Problem(WARNING, "temp-file", "leftover temporary file of an interrupted write", str(p)))
        else:
            add(Problem(WARNING, "unknown-file", "not a shard written by tensortap", str(p)))
    return shards


def _verify_record(run: Run, rec: Record, shards: dict[str, ShardCheck | None], add) -> bool:
    """Check one record against its shard; True when its data verifies."""
    spath = str(run.shard_path(rec))
    if rec.shard not in shards:
        add(Problem(ERROR, "missing-shard", "the record's shard file does not exist", spath, rec.label))
        return False
    chk = shards[rec.shard]
    if chk is None or not chk.ok:
        add(Problem(ERROR, "shard", "the record's shard is damaged (see the shard's problems)",
                    spath, rec.label))
        return False
    entry = chk.tensors.get(rec.tensor or "")
    if entry is None:
        add(Problem(ERROR, "missing-tensor", f"shard has no tensor {one_line(str(rec.tensor), 80)!r}",
                    spath, rec.label))
        return False
    want = TORCH_TO_ST.get(rec.dtype or "")
    if want is not None and want != entry.dtype:  # unknown names: Run.load still compares
        add(Problem(ERROR, "dtype", f"shard stores {entry.dtype}, manifest says {rec.dtype}", spath, rec.label))
        return False
    if rec.shape is not None and tuple(rec.shape) != entry.shape:
        add(Problem(ERROR, "shape", f"shard stores shape {list(entry.shape)}, manifest says "
                    f"{list(rec.shape)}", spath, rec.label))
        return False
    if not rec.checksum:
        add(Problem(WARNING, "no-checksum", "record has no checksum; its bytes cannot be verified",
                    spath, rec.label))
    try:
        run.load(rec, verify=True)
    except CorruptRecordError as e:
        kind = "checksum" if "checksum" in str(e) else "shard"
        add(Problem(ERROR, kind, _after_where(str(e)), spath, rec.label))
        return False
    except RunFormatError as e:
        add(Problem(ERROR, "shard", _after_where(str(e)), spath, rec.label))
        return False
    return True


def _after_where(message: str) -> str:
    # Run.load's messages start with "<file> tensor <name> (record <label>): "; the
    # problem already carries file and record, so keep only what went wrong.
    head, sep, tail = message.partition("): ")
    return tail if sep else message
