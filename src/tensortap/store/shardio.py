"""Writing one safetensors shard at an exact path, with plain ``write()`` calls.

Why not ``safetensors.torch.save_file``: since safetensors 0.6 it writes to a hidden
``.tmpXXXXXX`` file of its own and renames it, so a process killed mid-save leaves a file
no tensortap name describes (the writer already writes under its own temporary name and
renames; two layers of temporary files buy nothing). Writing directly also lets the bytes
go from the capture buffers to the file with no intermediate copy.

The layout is safetensors' own: ``u64 little-endian N``, ``N`` bytes of JSON header
(padded with spaces to a multiple of 8; to 4096 for direct writes), then the tensors back to back. Tensors are laid
out by element size, largest first (as safetensors does), so every tensor starts at a
multiple of its element size and memory-mapped reads are aligned.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import torch

from tensortap.store.directio import BLOCK, DirectWriter, open_direct
from tensortap.store.shardcheck import TORCH_TO_ST
from tensortap.store.stats import tensor_bytes_view


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if not n:
            raise OSError(errno.EIO, "shard write made no progress")
        view = view[n:]


def write_shard(path: Path, tensors: dict[str, torch.Tensor], direct: bool = False) -> int:
    """Write ``tensors`` (contiguous, CPU) as a safetensors file at ``path``; returns data bytes.

    Not fsynced: the caller decides when the file must be durable. ``direct`` writes around
    the page cache (``store/directio.py``) and raises :class:`DirectUnsupported` if the
    filesystem refuses, before anything valid is at ``path``; write buffered then.
    """
    order = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    # Direct writes pad the header (with spaces, as the format allows) to a whole block,
    # so the tensors start block-aligned in the file and can be written without a copy.
    head, offset = _header(order, BLOCK if direct else 8)
    if direct:
        _write_direct(path, head, order)
    else:
        _write_buffered(path, head, order)
    return offset


def _header(order: list[tuple[str, torch.Tensor]], align: int) -> tuple[bytes, int]:
    """The length prefix and JSON header (padded so the data starts at a multiple of
    ``align``) for tensors in file order, and the data size."""
    header: dict[str, dict] = {}
    offset = 0
    for name, t in order:
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in TORCH_TO_ST:
            raise TypeError(f"safetensors cannot store dtype {dtype} (tensor {name})")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": TORCH_TO_ST[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(len(head) + 8) % align)
    return struct.pack("<Q", len(head)) + head, offset


def _write_buffered(path: Path, head: bytes, order: list[tuple[str, torch.Tensor]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, head)
        for _, t in order:
            if t.numel():
                _write_all(fd, tensor_bytes_view(t.contiguous()))
    finally:
        os.close(fd)


def _write_direct(path: Path, head: bytes, order: list[tuple[str, torch.Tensor]]) -> None:
    fd = open_direct(path)
    try:
        w = DirectWriter(fd)
        try:
            w.write(torch.frombuffer(bytearray(head), dtype=torch.uint8))
            for _, t in order:
                if t.numel():
                    w.write(t.contiguous().reshape(-1).view(torch.uint8))
            w.finish()
        finally:
            w.release()
    finally:
        os.close(fd)
