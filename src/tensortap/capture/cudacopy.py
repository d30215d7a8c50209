"""Device-to-host copies of CUDA tensors for the capture pipeline, with no device sync.

Kept apart from the CPU path because it cannot be exercised on CPU-only machines (the
project's CI): it is written to the CUDA stream semantics documented by PyTorch and is
untested here. The pipeline calls it only for tensors with ``is_cuda``.
"""

from __future__ import annotations

from typing import Any

import torch


class CudaCopier:
    """Device-to-host copies without a device sync in the hook (cannot be tested on CPU-only CI).

    The tensor is first cloned on its own (current) stream, so kernels queued later on that
    stream, which may update it in place, cannot change what is saved; the clone is then
    copied into pinned host memory (torch's caching host allocator reuses those blocks) on a
    side stream, and an event marks when the host copy is complete.
    """

    def __init__(self) -> None:
        self._streams: dict[torch.device, Any] = {}

    def copy(self, t: torch.Tensor) -> tuple[torch.Tensor, Any]:
        dev = t.device
        side = self._streams.get(dev)
        if side is None:
            side = self._streams[dev] = torch.cuda.Stream(device=dev)
        src = t.detach().clone(memory_format=torch.contiguous_format)
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            host.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(side)
        src.record_stream(side)  # the clone's memory is not reused before the copy ends
        return host, event
