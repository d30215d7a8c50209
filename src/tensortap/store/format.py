"""Names and constants of the on-disk run format (see docs/format.md)."""

from __future__ import annotations

import re
from pathlib import Path

FORMAT_VERSION = 1
RUN_JSON = "run.json"
MANIFEST = "manifest.jsonl"
RANK_STATUS = "status.json"
TOKENS = "tokens.jsonl"
DATA_DIR = "data"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".safetensors"

_RANK_RE = re.compile(r"^rank-(\d+)$")


def rank_dir(root: Path, rank: int) -> Path:
    return root / f"rank-{int(rank)}"


def shard_name(index: int) -> str:
    # Shard names are generated, never derived from model names: nothing a model says
    # ends up in a file path.
    return f"{SHARD_PREFIX}{index:06d}{SHARD_SUFFIX}"


def is_valid_shard_name(name: str) -> bool:
    return re.fullmatch(rf"{SHARD_PREFIX}\d{{6}}\{SHARD_SUFFIX}", name) is not None


def list_rank_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    if not root.is_dir():
        return out
    for child in root.iterdir():
        m = _RANK_RE.match(child.name)
        if m and child.is_dir():
            out.append((int(m.group(1)), child))
    return sorted(out)


MAX_NAME_CHARS = 4096
"""Longest module name, path or other string field a manifest line may hold. The writer
never stores a longer one (capture does not plan such a module) and the reader rejects
one, so both sides keep the same rule."""


def string_problem(value: object) -> str | None:
    """Why ``value`` cannot be a manifest string field (None when it can)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if "\x00" in value:
        return "must not contain NUL"
    if len(value) > MAX_NAME_CHARS:
        return f"is {len(value)} characters long, over the {MAX_NAME_CHARS} a run allows"
    return None
