"""Shared helpers for the reliability tests: a small real run, the CLI in-process, shard surgery."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
import torch.nn as nn

import tensortap as tt
from tensortap.cli.main import main

HTML_NAME = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'


def make_run(path: Path, steps: int = 2) -> Path:
    """A real captured run: Linear -> ReLU -> Linear, ``steps`` forwards, one shard."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad(), tt.capture(net, path):
        for i in range(steps):
            net(torch.randn(2, 4, generator=torch.Generator().manual_seed(i)))
    return path


def manifest(run: Path, rank: int = 0) -> Path:
    return run / f"rank-{rank}" / "manifest.jsonl"


def shards(run: Path, rank: int = 0) -> list[Path]:
    return sorted((run / f"rank-{rank}" / "data").glob("shard-*.safetensors"))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process; returns (exit code, stdout, stderr)."""
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, what: str = "") -> None:
    """Exit 2, exactly one line on stderr, a real message (not an internal error), no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{what}: exit {rc}, stderr {err!r}"
    assert "Traceback" not in err, f"{what}: traceback on stderr:\n{err}"
    assert len(lines) == 1, f"{what}: {len(lines)} lines on stderr:\n{err}"
    assert lines[0].startswith("tensortap: error: "), f"{what}: {lines[0]!r}"
    assert "\x1b" not in err, f"{what}: raw escape character on stderr"


def read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_shard(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> None:
    """Write a safetensors file with any header (a dict is serialised and space-padded to
    8 bytes, as safetensors does); ``length`` overrides the length prefix (to lie)."""
    body = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if not isinstance(header, bytes):
        body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: to prove nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def flip_record_byte(run: Path, rec) -> Path:
    """Flip one bit inside the stored bytes of ``rec``'s tensor; returns the shard path."""
    path = run / f"rank-{rec.rank}" / "data" / rec.shard
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    begin, end = header[rec.tensor]["data_offsets"]
    raw[8 + n + (begin + end) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    return path
