"""Capture configuration: one validated object from kwargs, JSON, a file, or the environment.

Keys of vLLM's (unmerged) intermediate-logging config are accepted as aliases so that
configs written for it work unchanged: output_dir, module_call_match, log_step_ids,
max_tensor_size, device_names, enabled.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tensortap.errors import ConfigError

ENV_CONFIG = "TENSORTAP_CONFIG"
ENV_DIR = "TENSORTAP_DIR"

ALIASES = {
    "output_dir": "out",
    "module_call_match": "modules",
    "log_step_ids": "steps",
    "max_tensor_size": "max_numel",
    "device_names": "devices",
}

_CALL_SUFFIX = re.compile(r"^(.*):(\d+)$")
MAX_FLUSH_INTERVAL = 86400.0


class ModuleFilter(BaseModel):
    """One ``modules`` entry: a regex (``re.search`` on qualified names) and an optional call index."""

    model_config = ConfigDict(frozen=True)
    pattern: str
    call: int | None = None

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def parse_module_filter(spec: str) -> ModuleFilter:
    """``"layers\\.0\\.mlp:1"`` -> pattern ``layers\\.0\\.mlp``, only call 1 of each step."""
    m = _CALL_SUFFIX.match(spec)
    pattern, call = (m.group(1), int(m.group(2))) if m else (spec, None)
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        # OverflowError: a repeat count past the engine's limit (a{4294967296});
        # RecursionError: parentheses nested thousands deep.
        raise ConfigError(f"invalid module regex {pattern!r}: {e}") from None
    return ModuleFilter(pattern=pattern, call=call)


class CaptureConfig(BaseModel):
    """Everything that decides what a capture records and how it writes it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    out: str | None = None
    """Run directory. Required unless given to ``capture()`` directly."""
    modules: list[str] = []
    """Regexes (``re.search`` on names from ``named_modules()``), optional ``:i`` call suffix. Empty: all."""
    layers: list[int] | None = None
    """Decoder-layer indices to keep (modules under ``layers.<i>``); modules outside layers are kept."""
    steps: list[int] | None = None
    """Steps (root forward calls, from 0) to record. None or empty: all."""
    skip_steps: int = 0
    """Skip this many first steps (warm-up)."""
    roles: list[Literal["inputs", "outputs"]] = ["inputs", "outputs"]
    devices: list[str] | None = None
    """Only tensors on these devices (``cpu``, ``cuda:0``). None: all."""
    max_numel: int | None = None
    """Tensors with more elements keep metadata and statistics only."""
    mode: Literal["full", "stats"] = "full"
    """``stats``: no tensor data, float64 statistics and a sketch per record."""
    flush_interval: float = 1.0
    """Seconds after which captured records are committed to disk (the crash-loss window)."""
    shard_bytes: int = 256 * 2**20
    pending_bytes: int = 2**30
    """Memory budget for copies not yet written."""
    on_full: Literal["block", "drop"] = "block"
    strict: bool = False
    """Fail (after writing the run) when planned modules never fired."""
    durable: bool = True
    """fsync shards and manifests (turn off only for throwaway runs on slow disks)."""
    direct_io: bool = True
    """Write shards with ``O_DIRECT``, around the page cache (no kernel copy: the disk reads
    the capture's own buffers). Filesystems that refuse it get buffered writes automatically."""
    overwrite: bool = False
    enabled: bool = True

    @field_validator("modules", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else v
        if isinstance(v, list):
            return [r + "s" if r in ("input", "output") else r for r in v]
        return v

    @field_validator("modules")
    @classmethod
    def _valid_regexes(cls, v: list[str]) -> list[str]:
        for spec in v:
            parse_module_filter(spec)
        return v

    @field_validator("steps", "layers")
    @classmethod
    def _non_negative(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(i < 0 for i in v):
            raise ValueError("must be non-negative integers")
        return v

    @field_validator("flush_interval")
    @classmethod
    def _positive_interval(cls, v: float) -> float:
        # It is the crash-loss window, so it must be a real number of seconds; inf or
        # 1e300 would also overflow the writer thread's timed wait.
        if not 0 < v <= MAX_FLUSH_INTERVAL:
            raise ValueError(f"must be > 0 and <= {MAX_FLUSH_INTERVAL:g} seconds")
        return v

    @field_validator("shard_bytes", "pending_bytes")
    @classmethod
    def _positive_bytes(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be > 0 bytes")
        return v

    def module_filters(self) -> list[ModuleFilter]:
        return [parse_module_filter(s) for s in self.modules]

    def wants_step(self, step: int) -> bool:
        if step < self.skip_steps:
            return False
        return not self.steps or step in self.steps


def valid_keys() -> list[str]:
    return sorted(CaptureConfig.model_fields) + sorted(ALIASES)


def _normalize_keys(d: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {key!r}")
        name = ALIASES.get(key, key)
        if name not in CaptureConfig.model_fields:
            raise ConfigError(
                f"{source}: unknown capture config key {key!r}; valid keys: {', '.join(valid_keys())}")
        if name in out:
            raise ConfigError(f"{source}: key {key!r} given twice (directly and as an alias)")
        out[name] = value
    return out


def _load_text(spec: str, source: str) -> dict[str, Any]:
    text = spec.strip()
    if not text.startswith("{"):
        try:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise ConfigError(f"{source}: {spec!r:.200} is neither inline JSON nor a readable file")
            text = path.read_text()
        except (OSError, RuntimeError, ValueError) as e:
            # RuntimeError: "~user" with no such user; OSError: a name too long;
            # ValueError: a NUL in the name, or a file that is not UTF-8 text.
            raise ConfigError(f"{source}: cannot read config {spec!r:.200}: {e}") from None
        source = str(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except (yaml.YAMLError, RecursionError) as e:
                raise ConfigError(f"{source}: invalid YAML: {str(e).splitlines()[0]}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{source}: config must be a mapping")
            return data
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{source}: invalid JSON: {e or 'nested too deeply'}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: config must be a JSON object")
    return data


def build_config(
    config: CaptureConfig | dict[str, Any] | str | Path | None = None,
    source: str = "config",
    **overrides: Any,
) -> CaptureConfig:
    """Merge ``config`` (object, dict, inline JSON or file path) with keyword overrides.

    Overrides that are None are ignored, so callers can pass optional CLI flags through.
    """
    if isinstance(config, CaptureConfig):
        base = config.model_dump(exclude_unset=True)
    elif isinstance(config, dict):
        base = _normalize_keys(config, source)
    elif isinstance(config, (str, Path)):
        base = _normalize_keys(_load_text(str(config), source), source)
    elif config is None:
        base = {}
    else:
        raise ConfigError(f"{source}: expected a dict, JSON text or a file path, got {type(config).__name__}")
    base.update(_normalize_keys({k: v for k, v in overrides.items() if v is not None}, "argument"))
    try:
        return CaptureConfig(**base)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: invalid value for {loc!r}: {err['msg']} "
                          f"(got {err.get('input')!r:.60})") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def config_from_env(environ: dict[str, str] | None = None) -> CaptureConfig | None:
    """The config that ``TENSORTAP_CONFIG`` / ``TENSORTAP_DIR`` ask for, or None when neither is set."""
    env = os.environ if environ is None else environ
    spec = env.get(ENV_CONFIG)
    out_dir = env.get(ENV_DIR)
    if not spec and not out_dir:
        return None
    cfg = build_config(spec or None, source=ENV_CONFIG)
    if out_dir:
        cfg.out = out_dir
    if not cfg.out:
        raise ConfigError(f"{ENV_CONFIG} has no output_dir/out and {ENV_DIR} is not set")
    return cfg
