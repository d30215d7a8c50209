"""A fixed-seed linear sketch of a tensor (a count sketch), so stats-only runs can be compared.

``S`` is linear, so ``S(a) - S(b) = S(a - b)`` and ``||S(a - b)||`` estimates ``||a - b||``;
likewise ``<S(a), S(b)>`` estimates ``<a, b>``. Two runs sketched with the same
``SKETCH_DIM`` of tensors with equal numel can therefore estimate rel_l2, cosine and SQNR
without storing data. The estimates are unbiased; the relative standard deviation of
``||S(d)||^2`` is about ``sqrt(2 / SKETCH_DIM)`` (12.5 %), so ``||S(d)||`` is within about
6 % of ``||d||`` (one sigma) when the energy of ``d`` is spread over many elements.

The hash is chosen so that sketching costs one matrix-vector product: element ``i`` goes
to bucket ``i mod SKETCH_DIM`` with sign ``u[i // SKETCH_DIM]``, ``u`` a fixed pseudo-random
±1 sequence (a hash of the row index, so it never depends on tensor size or call order).
Viewing the flat tensor as rows of ``SKETCH_DIM`` elements, the sketch is ``u @ rows``.
Elements sharing a bucket come from different rows and get independent signs, which is all
a count sketch needs. ``SKETCH_DIM`` is prime, so a channel of a ``[tokens, hidden]`` tensor
(stride ``hidden``, typically a power of two) is spread over all buckets rather than
folded into one; only a row length that is a multiple of 127 would alias.

All arithmetic is float64 (a sketch must resolve differences of 1e-7 relative, the size of
fp32 engine noise). NaN and ±Inf count as 0.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

import numpy as np
import torch

from tensortap.store.stats import float64_pieces

SKETCH_DIM = 127
_SEED = 0x7E45_0A7A_5EED_0001

ENCODED_PREFIX = "f64le:"
"""A sketch in a manifest line: this prefix and the base64 of its little-endian float64
values (lossless). Writing 127 floats as JSON numbers cost ~80 µs per record (shortest
float repr), a string ~3 µs; readers also accept a JSON list of numbers."""
MAX_DIM = 1 << 16

_signs = torch.empty(0, dtype=torch.float64)
_signs_np = _signs.numpy()
"""The same table as a numpy view, for the compiled kernels (converting it per call cost
a few microseconds of every stats-mode hook)."""
_signs_lock = threading.Lock()


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # numpy uint64 arithmetic wraps modulo 2**64 (well-defined, unlike signed int64 overflow).
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_signs(rows: int) -> torch.Tensor:
    """The first ``rows`` entries of the fixed ±1 row-sign sequence ``u`` (float64)."""
    return _sign_table(rows)[:rows]


def _sign_table(rows: int) -> torch.Tensor:
    """The whole sign table computed so far, at least ``rows`` long (grown as needed)."""
    global _signs, _signs_np
    table = _signs
    if table.numel() < rows:
        with _signs_lock:
            table = _signs
            if table.numel() < rows:
                size = max(rows, 2 * table.numel(), 4096)
                with np.errstate(over="ignore"):
                    h = _splitmix64(np.arange(size, dtype=np.uint64) ^ np.uint64(_SEED))
                bits = (h >> np.uint64(63)).astype(np.float64)
                table = torch.from_numpy(bits * 2.0 - 1.0)
                # The numpy view first: a reader that sees the new tensor may take its view.
                _signs_np = table.numpy()
                _signs = table
    return table


class CountSketch:
    """Accumulates the sketch of one flat tensor from consecutive float64 pieces.

    ``update(offset, piece)`` may be called with pieces of any length, in order;
    ``result()`` returns the ``SKETCH_DIM`` float64 values.
    """

    def __init__(self, dim: int = SKETCH_DIM) -> None:
        self.dim = dim
        self.acc = torch.zeros(dim, dtype=torch.float64)
        self._acc_np = self.acc.numpy()

    def update(self, offset: int, piece: torch.Tensor) -> None:
        d = self.dim
        n = piece.numel()
        pos = 0
        head = (-offset) % d  # elements until the next row boundary
        if head:
            take = min(head, n)
            row, col = divmod(offset, d)
            self.acc[col:col + take].add_(piece[:take], alpha=float(row_signs(row + 1)[row]))
            pos = take
        full = (n - pos) // d
        if full:
            row0 = (offset + pos) // d
            rows = piece[pos:pos + full * d].view(full, d)
            self.acc.add_(row_signs(row0 + full)[row0:] @ rows)
            pos += full * d
        if pos < n:
            row = (offset + pos) // d
            self.acc[:n - pos].add_(piece[pos:], alpha=float(row_signs(row + 1)[row]))

    def kernel_arrays(self, stop: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(row signs covering elements [0, stop), accumulator)`` as numpy views, for the
        compiled kernel that sketches while it computes statistics; None when this
        sketch's dimension is not the kernel's row ``width``."""
        if self.dim != width:
            return None
        rows = stop // self.dim + 1
        if _signs_np.size < rows:
            _sign_table(rows)
        return _signs_np, self._acc_np

    def result(self) -> tuple[float, ...]:
        return tuple(self.acc.tolist())


def sketch(t: torch.Tensor, dim: int = SKETCH_DIM) -> tuple[float, ...]:
    """The count sketch of ``t`` (``dim`` float64 values)."""
    sk = CountSketch(dim)
    for off, piece in float64_pieces(t, clean=True):
        sk.update(off, piece)
    return sk.result()


def finish(sk: CountSketch, t: torch.Tensor) -> tuple[float, ...] | None:
    """The result of a sketch fed raw pieces, redone with NaN/Inf as 0 if any were present.

    None when even that is not finite (float64 data near its overflow limit): the
    manifest is strict JSON, and no sketch is better than a wrong one.
    """
    values = finished(sk, t)
    return None if values is None else tuple(values.tolist())


def finished(sk: CountSketch, t: torch.Tensor) -> np.ndarray | None:
    """``finish`` as a float64 array (what ``encode_sketch`` takes without converting)."""
    if not np.isfinite(sk.acc.numpy()).all():  # numpy: a fifth of torch's cost on 127 values
        sk = CountSketch(sk.dim)
        for off, piece in float64_pieces(t, clean=True):
            sk.update(off, piece)
        if not np.isfinite(sk.acc.numpy()).all():
            return None
    return sk.acc.numpy()


def encode_sketch(values: tuple[float, ...] | np.ndarray) -> str:
    """The manifest form of a sketch (``ENCODED_PREFIX`` + base64 float64)."""
    raw = np.ascontiguousarray(values, dtype="<f8").tobytes()
    return ENCODED_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_sketch(obj: Any) -> tuple[float, ...]:
    """A sketch from a manifest line: the encoded string or a JSON list of numbers.

    Raises ValueError on anything else (a hostile or damaged manifest).
    """
    if isinstance(obj, str):
        if not obj.startswith(ENCODED_PREFIX):
            raise ValueError(f"sketch string must start with {ENCODED_PREFIX!r}")
        try:
            raw = base64.b64decode(obj[len(ENCODED_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("sketch is not valid base64") from None
        if len(raw) % 8 or len(raw) > 8 * MAX_DIM:
            raise ValueError(f"sketch holds {len(raw)} bytes: not a whole number of float64 values")
        values = np.frombuffer(raw, dtype="<f8")
        if not np.isfinite(values).all():
            raise ValueError("sketch holds a non-finite value")
        return tuple(values.tolist())
    if not isinstance(obj, list) or not all(isinstance(x, (int, float)) for x in obj):
        raise ValueError("sketch must be a list of numbers or an encoded string")
    try:
        return tuple(float(x) for x in obj)
    except OverflowError:
        # JSON integers are unbounded; float() of a 400-digit one overflows.
        raise ValueError("sketch holds a number too large for a float") from None
