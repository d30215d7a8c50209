"""Write any ``Run`` (an imported dump or a native run) as a native tensortap run.

Records keep their keys, order (``seq``), statistics and extras; tensors are copied into
safetensors shards through ``RankWriter`` (same durability as a capture); token tables,
problems and notes carry over. One batch of tensors (``shard_bytes``) is held at a time.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from tensortap.version import __version__
from tensortap.errors import RunFormatError, TensortapError
from tensortap.store import format as fmt
from tensortap.store.jsonio import atomic_write_json
from tensortap.store.reader import Run
from tensortap.store.stats import checksum
from tensortap.store.writer import RankWriter

# safetensors cannot store these; such records keep their statistics only (as in capture).
_UNSTORABLE = {torch.complex32, torch.complex64, torch.complex128}


def _prepare(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise TensortapError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise TensortapError(f"{dst}: exists and is not empty; choose another path or pass --overwrite")
        if not (dst / fmt.RUN_JSON).exists():
            raise TensortapError(f"refusing to overwrite {dst}: it is not a tensortap run (no run.json)")
        import shutil

        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)


def convert_run(src: Run, dst: str | Path, overwrite: bool = False, shard_bytes: int = 256 * 2**20,
                durable: bool = True) -> dict[str, Any]:
    """Copy every record of ``src`` into a new native run at ``dst``; returns a summary."""
    dst = Path(dst)
    if dst.resolve() == Path(src.path).resolve():
        raise TensortapError(f"{dst}: the destination is the source")
    records = src.records()  # reads the whole dump first: refusals fail before anything is written
    _prepare(dst, overwrite)
    started = time.time()
    info = dict(src.info)
    imported = dict(info.get("imported") or {"format": "native", "source": str(src.path)})
    info.update({
        "format_version": fmt.FORMAT_VERSION,
        "tool": "tensortap",
        "versions": {"tensortap": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "created": started,
        "imported": imported,
        "status": "incomplete",
        "reason": "conversion in progress",
    })
    info.setdefault("engine", {"name": "torch"})
    info.setdefault("model", {})
    info.setdefault("capture", {})
    atomic_write_json(dst / fmt.RUN_JSON, info, durable=durable)
    counts = {"records": 0, "tensors": 0, "bytes": 0}
    for rank in sorted({r.rank for r in records} | set(src.ranks or [0])):
        n = _convert_rank(src, [r for r in records if r.rank == rank], dst, rank, shard_bytes, durable)
        for k in counts:
            counts[k] += n[k]
    problems = list(src.problems)
    reason = src.reason if src.status != "complete" else None
    info.update({
        "status": "complete" if src.status == "complete" else "incomplete",
        "reason": reason,
        "warnings": list(dict.fromkeys(list(src.warnings) + list(src.notes) + problems)),
        "finished": time.time(),
        "summary": {**counts, "steps": len(src.steps()), "problems": problems, "never_fired": []},
    })
    atomic_write_json(dst / fmt.RUN_JSON, info, durable=durable)
    return {**counts, "run": str(dst), "status": info["status"]}


def _convert_rank(src: Run, records: list, dst: Path, rank: int, shard_bytes: int,
                  durable: bool) -> dict[str, int]:
    writer = RankWriter(dst, rank, durable=durable)
    batch: list[tuple[dict[str, Any], torch.Tensor | None]] = []
    batch_bytes = 0
    out = {"records": 0, "tensors": 0, "bytes": 0}
    try:
        for rec in records:
            d = rec.to_json()
            for k in ("shard", "tensor", "checksum"):
                d.pop(k, None)
            t = None
            if rec.has_data:
                try:
                    t = src.load(rec)
                except RunFormatError as e:
                    # A damaged record stays listed, without data, and says why.
                    d["kind"] = "stats"
                    d["extra"] = {**d.get("extra", {}), "error": str(e)[:300]}
                    t = None
                if t is not None and t.dtype in _UNSTORABLE:
                    d["kind"] = "stats"
                    d["extra"] = {**d.get("extra", {}), "skipped": f"dtype {t.dtype} not storable"}
                    t = None
                elif t is not None:
                    # Own contiguous storage: safetensors refuses tensors that share memory,
                    # and the checksum must describe exactly the bytes written.
                    t = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
                    d["checksum"] = checksum(t)
                    out["tensors"] += 1
                    out["bytes"] += t.numel() * t.element_size()
                    batch_bytes += t.numel() * t.element_size()
            batch.append((d, t))
            out["records"] += 1
            if batch_bytes >= shard_bytes:
                writer.commit(batch)
                batch, batch_bytes = [], 0
        if batch:
            writer.commit(batch)
        for step in sorted({r.step for r in records}):
            table = src.tokens(step, rank)
            if table:
                writer.append_tokens({**table, "step": step})
        writer.write_status({"status": "complete" if src.status == "complete" else "incomplete",
                             "reason": src.reason, "pid": os.getpid(), "records": out["records"],
                             "converted_from": str(src.path)})
    finally:
        writer.close()
    return out
