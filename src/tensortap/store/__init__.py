"""Run directory format: writing, reading and verifying captured records.

Imports no engine. See docs/format.md for the on-disk layout. The names below load on
first use, so importing a light submodule (format, record, importers.names) stays light.
"""

from tensortap.lazy import lazy_getattr

__all__ = ["FORMAT_VERSION", "Record", "TensorStats", "Run", "open_run"]

__getattr__ = lazy_getattr(__name__, {
    "FORMAT_VERSION": "tensortap.store.format",
    "Record": "tensortap.store.record",
    "TensorStats": "tensortap.store.record",
    "Run": "tensortap.store.reader",
    "open_run": "tensortap.store.reader",
})
