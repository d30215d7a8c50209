"""Compiled one-pass kernels for the float64 statistics and pair metrics, with a fallback.

Most of tensortap's CPU time goes to two loops over every byte: the statistics (and
stats-mode sketch) of each captured tensor, and the metrics of each pair in a diff. In
numpy/torch each is several passes (widen to float64, sum, dot, min, max, count zeros),
each a trip through memory; compiled with numba, one pass does them all (2-3x less CPU;
bench/NOTES.md). On two cores that CPU is taken from the model being captured.

numba is optional (``pip install tensortap[fast]``; vLLM already depends on it). Without it,
or with ``TENSORTAP_KERNELS=off``, the numpy/torch code computes the same values (up to
float64 rounding: the kernels sum in a different order). Loading is explicit and at most
once per process: importing numba and loading the compiled code takes about half a
second, so a capture session pays it at start (``load()``), never in a hook; tools that
only read pay it on first use. The compiled code is cached on disk by numba
(``cache=True``), so only the first process on a machine compiles (a few seconds).

This module is layer-neutral (like ``errors``): ``store`` and ``compare`` both use it, and
it imports nothing else from tensortap but ``errors``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from types import ModuleType
from typing import Iterator

from tensortap.errors import TensortapError

ENV = "TENSORTAP_KERNELS"
"""``off`` uses the numpy/torch code; ``numba`` makes a failure to load an error;
unset or ``auto``: numba when it loads, else the fallback (said by ``status()``)."""

_lock = threading.Lock()
_module: ModuleType | None = None
_status: str | None = None
_forced_off = 0


class KernelsUnavailable(TensortapError):
    """``TENSORTAP_KERNELS=numba`` was asked for and numba could not be loaded."""


def _want() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "off", "numba"):
        raise KernelsUnavailable(f"{ENV}={value!r}: expected auto, off or numba")
    return value


def load() -> bool:
    """Load (and compile, the first time on a machine) the kernels; True when they are in use.

    Safe to call from any thread, any number of times: the work happens once per process.
    """
    global _module, _status
    if _forced_off:
        return False
    if _status is not None:
        return _module is not None
    want = _want()
    with _lock:
        if _status is not None:
            return _module is not None
        if want == "off":
            _status = f"off ({ENV}=off)"
            return False
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # numba warns when it cannot write its cache (a read-only install): the
                # kernels still work, compiled in each process; not the user's concern.
                warnings.simplefilter("ignore")
                from tensortap.kernels import compiled
                compiled.warm_up()
        except Exception as e:  # noqa: BLE001 - any failure means "use the fallback"
            _status = f"numpy (numba unavailable: {type(e).__name__}: {e})"
            if want == "numba":
                raise KernelsUnavailable(f"{ENV}=numba but the kernels did not load: {e}") from e
            return False
        _module = compiled
        _status = f"numba {compiled.numba_version()} (loaded in {time.perf_counter() - start:.2f} s)"
        return True


def get() -> ModuleType | None:
    """The compiled kernels (``tensortap.kernels.compiled``), or None for the fallback.

    Loads them on first use (see ``load``).
    """
    if _forced_off:
        return None
    if _status is None:
        load()
    return _module


def loaded() -> ModuleType | None:
    """The compiled kernels if already loaded, without ever loading them."""
    return None if _forced_off else _module


def status() -> str:
    """One line on what computes statistics and metrics: ``numba ...``, ``numpy (...)``."""
    if _forced_off:
        return "numpy (kernels disabled in this process)"
    return _status if _status is not None else "not loaded yet"


def name() -> str:
    """``numba`` or ``numpy``: what computes statistics and metrics now."""
    return "numba" if loaded() is not None else "numpy"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Use the numpy/torch fallback in every thread while inside (tests compare the two)."""
    global _forced_off
    with _lock:
        _forced_off += 1
    try:
        yield
    finally:
        with _lock:
            _forced_off -= 1
