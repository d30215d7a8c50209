"""Run directory format: writing, reading and verifying captured records.

Imports no engine. See docs/format.md for the on-disk layout.
"""

from tensortap.store.format import FORMAT_VERSION
from tensortap.store.record import Record, TensorStats
from tensortap.store.reader import Run, open_run

__all__ = ["FORMAT_VERSION", "Record", "TensorStats", "Run", "open_run"]
