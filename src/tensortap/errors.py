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


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` made safe for a one-line terminal message.

    Names in hostile runs can hold newlines or terminal escape sequences; control
    characters are shown as escapes (``\\n``, ``\\x1b``) so a message stays one line and
    cannot drive the terminal. Very long messages are cut at ``limit`` characters.
    """
    out = []
    for ch in str(text):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= limit else s[:limit] + "…"
