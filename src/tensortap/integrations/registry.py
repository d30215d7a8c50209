"""The engine registry: everything the rest of tensortap needs to know about an engine.

``ENGINES`` maps the name a run records in ``run.json`` (``engine.name``, or ``family``
for imported dumps) to an :class:`EngineAdapter`. The CLI's ``--engine`` choices, the
automatic pairing of two runs (``diff --map auto``), the anchor adapters and the logits
modules all come from this table, so adding an engine is one folder under
``integrations/`` and one entry here (docs/adding-an-engine.md).

Entries name their functions as ``"module:function"`` strings, imported on first use:
importing the registry loads no engine and no adapter.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tensortap.errors import TensortapError

if TYPE_CHECKING:
    from tensortap.integrations.anchors.vocab import AnchorSet, RecordIndex
    from tensortap.store.reader import Run


@dataclass(frozen=True)
class EngineAdapter:
    """What one engine contributes. Only ``name`` is required."""

    name: str
    names_like: str | None = None
    """Another engine whose module names this engine's runs share (a plain ``tt.capture``
    of a transformers model records ``torch`` but holds transformers' names): such runs
    pair by raw names."""
    anchors: str | None = None
    """``"module:function"``: ``function(run, index) -> AnchorSet`` maps the run's raw
    records to anchors (integrations/anchors/vocab.py). Engines with anchors pair with
    each other anchor by anchor."""
    logits_modules: tuple[str, ...] = ()
    """Last components of module names whose outputs are logits (top-1 and KL in diffs)."""
    capture: str | None = None
    """``"module:function"`` for ``tensortap capture --engine NAME``:
    ``function(model_dir, config, prompts=, max_new_tokens=, dtype=, **options)`` returns
    ``{"texts", "token_ids", "run"}``."""
    capture_options: tuple[str, ...] = ()
    """CLI options the capture function accepts beyond the common ones."""
    summary: str = ""


ENGINES: dict[str, EngineAdapter] = {}


_LOGITS: list[re.Pattern] = []
"""The compiled logits pattern of the current table (cleared when an entry changes)."""


def register_engine(adapter: EngineAdapter) -> None:
    """Add (or replace) an engine's entry."""
    ENGINES[adapter.name] = adapter
    _LOGITS.clear()


register_engine(EngineAdapter(
    "hf", anchors="tensortap.integrations.anchors.hf:anchor_set",
    logits_modules=("lm_head", "logits", "output_layer", "embed_out"),
    capture="tensortap.integrations.hf:capture_generate",
    summary="transformers (AutoModelForCausalLM.generate)"))
register_engine(EngineAdapter(
    "torch", names_like="hf", anchors="tensortap.integrations.anchors.hf:anchor_set",
    logits_modules=("lm_head", "logits", "output_layer", "embed_out"),
    summary="a plain nn.Module under tt.capture"))
register_engine(EngineAdapter(
    "vllm", anchors="tensortap.integrations.anchors.vllm:anchor_set",
    logits_modules=("logits_processor", "lm_head"),
    capture="tensortap.integrations.vllm.offline:capture_generate",
    capture_options=("tensor_parallel_size", "model_impl"),
    summary="vLLM (offline LLM.generate; serve through the plugin)"))


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def engine_name(run: "Run") -> str:
    """The engine whose module names a run holds: ``engine.family`` (imported dumps name
    the tool in ``name`` and the engine in ``family``, docs/importers.md), else
    ``engine.name``, else ``torch``."""
    eng = run.info.get("engine")
    name = (eng.get("family") or eng.get("name")) if isinstance(eng, dict) else None
    return str(name) if isinstance(name, str) and name else "torch"


def engine(name: str) -> EngineAdapter | None:
    """The registered adapter for ``name`` (None when unknown)."""
    return ENGINES.get(name)


def same_names(a: str, b: str) -> bool:
    """Whether runs of engines ``a`` and ``b`` use the same module names."""
    def base(n: str) -> str:
        e = ENGINES.get(n)
        return e.names_like if e is not None and e.names_like else n
    return a == b or base(a) == base(b)


def has_anchors(name: str) -> bool:
    e = ENGINES.get(name)
    return e is not None and e.anchors is not None


def build_anchor_set(run: "Run", index: "RecordIndex | None" = None) -> "AnchorSet":
    """Anchors of ``run`` by its engine's adapter."""
    from tensortap.integrations.anchors.vocab import RecordIndex

    name = engine_name(run)
    e = ENGINES.get(name)
    if e is None or e.anchors is None:
        known = ", ".join(n for n, x in ENGINES.items() if x.anchors)
        raise TensortapError(f"{run.path}: no anchor adapter for engine {name!r} (known: {known})")
    return _resolve(e.anchors)(run, index or RecordIndex(run))


def capture_engines() -> list[str]:
    """Names ``tensortap capture --engine`` accepts."""
    return [n for n, e in ENGINES.items() if e.capture]


def capture_function(name: str) -> Callable[..., dict[str, Any]]:
    """The capture entry of engine ``name`` (imported now)."""
    e = ENGINES.get(name)
    if e is None or e.capture is None:
        raise TensortapError(f"unknown engine {name!r} for capture (known: {', '.join(capture_engines())})")
    return _resolve(e.capture)


def logits_module_pattern() -> re.Pattern:
    """Module names whose outputs are logits, for every registered engine."""
    if not _LOGITS:
        names = sorted({n for e in ENGINES.values() for n in e.logits_modules})
        _LOGITS.append(re.compile(r"(^|\.)(" + "|".join(map(re.escape, names)) + r")$"))
    return _LOGITS[0]
