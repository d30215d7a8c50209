"""Exceptions shared by every layer.

`TensortapError` is the user-facing error: the CLI prints its message as one line and
exits 2. Anything else reaching the CLI is a bug and is reported as such.
"""

from __future__ import annotations


class TensortapError(Exception):
    """Bad input or unreadable data, with a message that says what, where, and what to do."""


class ConfigError(TensortapError):
    """A capture or diff configuration is invalid."""


class RunFormatError(TensortapError):
    """A run directory, manifest or shard cannot be read."""


class CorruptRecordError(RunFormatError):
    """A record's data is missing or does not match its checksum."""
