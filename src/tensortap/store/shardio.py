"""Writing one safetensors shard at an exact path, with plain ``write()`` calls.

Why not ``safetensors.torch.save_file``: since safetensors 0.6 it writes to a hidden
``.tmpXXXXXX`` file of its own and renames it, so a process killed mid-save leaves a file
no tensortap name describes (the writer already writes under its own temporary name and
renames; two layers of temporary files buy nothing). Writing directly also lets the bytes
go from the capture buffers to the file with no intermediate copy.

The layout is safetensors' own: ``u64 little-endian N``, ``N`` bytes of JSON header
(padded with spaces to a multiple of 8), then the tensors back to back. Tensors are laid
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

from tensortap.store.shardcheck import TORCH_TO_ST
from tensortap.store.stats import tensor_bytes_view


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if not n:
            raise OSError(errno.EIO, "shard write made no progress")
        view = view[n:]


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """Write ``tensors`` (contiguous, CPU) as a safetensors file at ``path``; returns data bytes.

    Not fsynced: the caller decides when the file must be durable.
    """
    order = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
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
    head += b" " * (-len(head) % 8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, struct.pack("<Q", len(head)) + head)
        for _, t in order:
            if t.numel():
                _write_all(fd, tensor_bytes_view(t.contiguous()))
    finally:
        os.close(fd)
    return offset
