"""Mapping: how a run's records become comparable items with canonical keys.

Two runs are paired on a canonical key ``(rank, step, module, call, role, path)``. A
*mapping* turns one run's records into :class:`Item`\\ s carrying that key:

- ``none``: the raw record key (identity);
- rename rules (``--map FILE`` or a dict/list): regex -> replacement on module names
  (and optionally paths), per side;
- ``auto``: identity when both runs come from engines that share module names
  (``run.json`` ``engine.name``; the engine registry, tensortap.integrations.registry,
  says which do); for runs of two engines with anchor adapters, anchor items such as
  ``layers.3.resid_post`` lined up token by token (compare/anchor_mapping.py).

An adapter may build items that are not one raw record (a sum of two records, a slice
of a fused projection): such an item sets ``loader`` and describes its metadata itself.

Rule file formats (JSON or YAML)::

    {"^transformer\\.h\\.(\\d+)": "model.layers.\\1", "\\.attn$": ".self_attn"}   # module rules, both runs

    module: {regex: replacement, ...}      # or a list of [regex, replacement]
    path:   {regex: replacement, ...}
    rules:                                 # full form
      - {match: regex, replace: repl, field: module|path, side: a|b|floor|all}

Rules apply in order with ``re.sub``; a ``side`` rule applies only to that run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch

from tensortap.errors import ConfigError, TensortapError
from tensortap.integrations.registry import engine_name, has_anchors, same_names
from tensortap.store.reader import Run
from tensortap.store.record import Record

PairKey = tuple[int, int, str, int, str, str]
"""``(rank, step, module, call, role, path)`` after mapping."""

SIDES = ("a", "b", "floor")


@dataclass(frozen=True)
class Item:
    """One comparable tensor (or value) of one run, under its canonical key."""

    key: PairKey
    record: Record
    """The raw record: metadata (kind, dtype, shape, stats, sketch, seq) and, unless
    ``loader`` is set, the data."""
    loader: Callable[[], torch.Tensor] | None = None
    """Builds the tensor when it is not simply ``run.load(record)`` (anchor adapters).
    Such a tensor is compared as given: its rows must already be lined up with the other
    side's (no token-table alignment is applied)."""
    row_keys: tuple[tuple[int, int], ...] | None = None
    """With ``loader``: the ``(request, position)`` of each row of the built tensor, when
    its rows are tokens (reports name the worst token by them)."""

    @property
    def rank(self) -> int:
        return self.key[0]

    @property
    def step(self) -> int:
        return self.key[1]

    @property
    def module(self) -> str:
        return self.key[2]

    @property
    def call(self) -> int:
        return self.key[3]

    @property
    def role(self) -> str:
        return self.key[4]

    @property
    def path(self) -> str:
        return self.key[5]

    @property
    def order(self) -> tuple[int, int]:
        """Execution order within its run: ``(rank, seq)``."""
        return (self.record.rank, self.record.seq)


class Mapping(Protocol):
    """Turns one run's records into items. ``side`` is ``a``, ``b`` or ``floor``."""

    name: str

    def items(self, run: Run, side: str) -> Iterator[Item]: ...


def raw_key(rec: Record) -> PairKey:
    return (rec.rank, rec.step, rec.module, rec.call, rec.role, rec.path)


class IdentityMapping:
    """Raw record keys, unchanged. ``notes`` say why ``auto`` chose raw names, if it did."""

    name = "none"

    def __init__(self, notes: list[str] | None = None) -> None:
        self.notes: list[str] = list(notes or [])

    def items(self, run: Run, side: str) -> Iterator[Item]:
        for rec in run.records():
            yield Item(raw_key(rec), rec)


@dataclass(frozen=True)
class Rule:
    """``re.sub(pattern, replace, <field>)`` on the records of ``side`` (``all``: every run)."""

    pattern: re.Pattern
    replace: str
    field: str = "module"
    side: str = "all"

    def apply(self, text: str) -> str:
        try:
            return self.pattern.sub(self.replace, text)
        except (re.error, IndexError) as e:
            # Bad group references in the replacement only fail when a name matches.
            raise ConfigError(f"map rule {self.pattern.pattern!r} -> {self.replace!r}: {e}") from None


@dataclass
class RenameMapping:
    """Rename rules applied to module names and paths before pairing."""

    rules: list[Rule] = field(default_factory=list)
    name: str = "rules"

    def rename(self, module: str, path: str, side: str) -> tuple[str, str]:
        for r in self.rules:
            if r.side not in ("all", side):
                continue
            if r.field == "module":
                module = r.apply(module)
            else:
                path = r.apply(path)
        return module, path

    def items(self, run: Run, side: str) -> Iterator[Item]:
        cache: dict[tuple[str, str], tuple[str, str]] = {}
        for rec in run.records():
            names = cache.get((rec.module, rec.path))
            if names is None:
                names = cache[(rec.module, rec.path)] = self.rename(rec.module, rec.path, side)
            yield Item((rec.rank, rec.step, names[0], rec.call, rec.role, names[1]), rec)


# -- auto -------------------------------------------------------------------------------
# Which engine a run comes from, and whether two engines share names or anchors, is the
# engine registry's knowledge (tensortap.integrations.registry).


# -- loading rule files ---------------------------------------------------------------
def _compile(pattern: Any, where: str) -> re.Pattern:
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}: regex must be a string, got {pattern!r:.80}")
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        raise ConfigError(f"{where}: invalid regex {pattern!r}: {e}") from None


def _rule(pattern: Any, replace: Any, fld: str, side: str, where: str) -> Rule:
    if not isinstance(replace, str):
        raise ConfigError(f"{where}: replacement for {pattern!r} must be a string, got {replace!r:.80}")
    if fld not in ("module", "path"):
        raise ConfigError(f"{where}: field must be 'module' or 'path', got {fld!r}")
    if side not in ("all", "both", *SIDES):
        raise ConfigError(f"{where}: side must be one of a, b, floor, all; got {side!r}")
    return Rule(_compile(pattern, where), replace, fld, "all" if side == "both" else side)


def _pairs(value: Any, fld: str, where: str) -> list[Rule]:
    """``{regex: repl}`` or ``[[regex, repl], ...]`` or ``[{match, replace, ...}, ...]``."""
    if isinstance(value, dict):
        return [_rule(k, v, fld, "all", where) for k, v in value.items()]
    if isinstance(value, list):
        out = []
        for i, entry in enumerate(value):
            w = f"{where}[{i}]"
            if isinstance(entry, (list, tuple)) and len(entry) == 2:
                out.append(_rule(entry[0], entry[1], fld, "all", w))
            elif isinstance(entry, dict):
                unknown = set(entry) - {"match", "replace", "field", "side"}
                if unknown or "match" not in entry or "replace" not in entry:
                    raise ConfigError(f"{w}: a rule is {{match, replace, field?, side?}}; got keys {sorted(entry)}")
                out.append(_rule(entry["match"], entry["replace"], entry.get("field", fld),
                                 entry.get("side", "all"), w))
            else:
                raise ConfigError(f"{w}: expected [regex, replacement] or {{match, replace}}, got {entry!r:.80}")
        return out
    raise ConfigError(f"{where}: expected a mapping or a list of rules, got {type(value).__name__}")


def rules_from(value: Any, where: str = "--map") -> RenameMapping:
    """Parse rename rules from a dict/list (the forms in this module's docstring)."""
    if isinstance(value, dict) and value and set(value) <= {"module", "path", "rules"}:
        rules: list[Rule] = []
        for key in ("rules", "module", "path"):
            if key in value:
                rules += _pairs(value[key], "module" if key == "rules" else key, f"{where}: {key}")
        return RenameMapping(rules)
    if value is None or value == {} or value == []:
        return RenameMapping([])
    return RenameMapping(_pairs(value, "module", where))


def load_rules_file(path: str | Path) -> RenameMapping:
    """Read rename rules from a JSON or YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read map file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: map file is not UTF-8 text") from None
    data: Any
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{p}: invalid JSON ({e})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    return rules_from(data, where=str(p))


def resolve_mapping(spec: Any, run_a: Run, run_b: Run) -> Mapping:
    """``auto`` | ``none`` | a rules file path | rules as dict/list | a Mapping object."""
    if spec is None or spec == "auto":
        ea, eb = engine_name(run_a), engine_name(run_b)
        if same_names(ea, eb):
            return IdentityMapping()
        if has_anchors(ea) and has_anchors(eb):
            from tensortap.compare.anchor_mapping import AnchorMapping  # imports this module

            anchored = AnchorMapping(run_a, run_b)
            if anchored.pairs_anything():
                return anchored
            why = f"the {ea}/{eb} anchors paired nothing ({anchored.why_empty()})"
        else:
            missing = ea if not has_anchors(ea) else eb
            why = f"no anchor adapter for engine {missing!r}"
        # Raw names are the better guess than nothing: dumps written with the other
        # engine's module names (vLLM's Transformers backend) pair by them directly.
        return IdentityMapping([f"{why}; comparing raw module names (pass --map FILE with "
                                f"rename rules to pair them differently)"])
    if spec == "none":
        return IdentityMapping()
    if isinstance(spec, (dict, list)):
        return rules_from(spec, where="map")
    if isinstance(spec, (str, Path)):
        return load_rules_file(spec)
    if hasattr(spec, "items") and callable(spec.items):
        return spec
    raise ConfigError(f"invalid map {spec!r:.80}: use 'auto', 'none', a rules file, or a dict of rules")
