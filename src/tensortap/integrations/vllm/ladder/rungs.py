"""The rungs of the ladder: named vLLM configurations, from fully eager to the default.

Each rung switches on a set of pieces of vLLM's compile integration (the switches of
vLLM's debugging guide, docs/design/debug_vllm_compile.md):

- ``compile``: Dynamo full-graph capture (vLLM's ``@support_torch_compile``), off with
  ``enforce_eager`` or ``-O.mode=NONE``;
- ``inductor``: Inductor compiles the captured graph (off with ``-O.backend=eager``);
- ``cache``: the compiled artifact came from vLLM's compile cache (off with
  ``VLLM_DISABLE_COMPILE_CACHE=1``). A rung with the cache on whose artifact was
  compiled fresh (a cache miss) ran without it, so the comparison uses the switches a
  rung really had (reported by its child process), not the nominal ones;
- ``cudagraph``: CUDA graphs capture and replay (``-O.cudagraph_mode``), GPU only.

Names are stable: scripts and docs (docs/vllm-ladder.md) refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tensortap.errors import ConfigError

SWITCHES = ("compile", "inductor", "cache", "cudagraph")
CACHE_ENV = "VLLM_DISABLE_COMPILE_CACHE"


@dataclass(frozen=True)
class Rung:
    """One engine configuration of the ladder."""

    name: str
    summary: str
    switches: frozenset[str]
    """Pieces this rung switches on (nominally; see the module docstring about the cache)."""
    enforce_eager: bool = False
    compilation_config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    gpu_only: bool = False
    cpu_compilation_config: dict[str, Any] | None = None
    """Used instead of ``compilation_config`` on a CPU machine, where vLLM rewrites some settings."""

    def compilation(self, gpu: bool) -> dict[str, Any]:
        if not gpu and self.cpu_compilation_config is not None:
            return dict(self.cpu_compilation_config)
        return dict(self.compilation_config)

    def settings(self, gpu: bool = False) -> str:
        """The rung's vLLM settings as a user would type them."""
        parts = []
        if self.enforce_eager:
            parts.append("enforce_eager=True")
        for k, v in self.compilation(gpu).items():
            parts.append(f"-O.{k}={v}")
        if not parts:
            parts.append("(vLLM defaults)")
        for k, v in self.env.items():
            parts.append(f"{k}={v}")
        return " ".join(parts)

    def engine_kwargs(self, extra_compilation: dict[str, Any] | None = None, gpu: bool = False) -> dict[str, Any]:
        """``LLM(...)`` arguments of this rung; ``extra_compilation`` goes to compiled rungs only.

        The rung's own keys win over ``extra_compilation``: they define the rung.
        """
        if self.enforce_eager:
            return {"enforce_eager": True}
        comp = dict(extra_compilation or {})
        comp.update(self.compilation(gpu))
        return {"enforce_eager": False, "compilation_config": comp}

    def to_dict(self, gpu: bool = False) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "settings": self.settings(gpu),
                "switches": sorted(self.switches), "gpu_only": self.gpu_only}


def _rungs() -> dict[str, Rung]:
    # Compile rungs pin cudagraph_mode NONE so that on a GPU they isolate the compiler
    # (on CPU vLLM forces it anyway); the cache switch is pinned both ways so a user's
    # VLLM_DISABLE_COMPILE_CACHE cannot silently change a rung.
    no_graphs = {"cudagraph_mode": "NONE"}
    cache_on, cache_off = {CACHE_ENV: "0"}, {CACHE_ENV: "1"}
    rungs = [
        Rung("eager", "no torch.compile, no CUDA graphs (the reference)", frozenset(),
             enforce_eager=True),
        # On CPU, vLLM 0.32 turns mode VLLM_COMPILE into DYNAMO_TRACE_ONCE and resets the
        # backend to inductor (platforms/cpu.py) unless the mode is already something else:
        # asking for DYNAMO_TRACE_ONCE + eager is what vLLM's own CPU CI setting amounts to.
        Rung("compile-no-inductor", "Dynamo graph capture, graph run eagerly (no Inductor)",
             frozenset({"compile"}), compilation_config={"backend": "eager", **no_graphs}, env=cache_on,
             cpu_compilation_config={"mode": "DYNAMO_TRACE_ONCE", "backend": "eager", **no_graphs}),
        Rung("compile", "Dynamo + Inductor, vLLM compile cache on", frozenset({"compile", "inductor", "cache"}),
             compilation_config=dict(no_graphs), env=cache_on),
        Rung("compile-no-cache", "Dynamo + Inductor, vLLM compile cache off", frozenset({"compile", "inductor"}),
             compilation_config=dict(no_graphs), env=cache_off),
        Rung("cudagraph-only", "CUDA graphs without torch.compile (-O.mode=NONE)", frozenset({"cudagraph"}),
             compilation_config={"mode": "NONE"}, env=cache_on, gpu_only=True),
        # Tells "compile + CUDA graphs" from "Inductor + CUDA graphs" apart (pairs).
        Rung("compile-no-inductor+cudagraph", "Dynamo graph capture run eagerly, with CUDA graphs",
             frozenset({"compile", "cudagraph"}), compilation_config={"backend": "eager"}, env=cache_on,
             gpu_only=True),
        Rung("compile+cudagraph", "vLLM's default: Dynamo + Inductor + cache + CUDA graphs",
             frozenset(SWITCHES), env=cache_on, gpu_only=True),
    ]
    return {r.name: r for r in rungs}


RUNGS: dict[str, Rung] = _rungs()
REFERENCE = "eager"
CPU_DEFAULT = ("eager", "compile-no-inductor", "compile", "compile-no-cache")


def default_rungs(gpu: bool) -> list[str]:
    """Every rung this machine can run."""
    return list(RUNGS) if gpu else list(CPU_DEFAULT)


def select_rungs(spec: str | list[str] | None, gpu: bool) -> tuple[list[Rung], list[str]]:
    """The rungs to run (reference first, ladder order) and notes about the choice.

    ``spec``: names (list or comma-separated); None for :func:`default_rungs`. GPU-only
    rungs stay in the list on a CPU machine: the report shows them as not available.
    """
    if spec is None:
        names = default_rungs(gpu)
    else:
        raw = spec.split(",") if isinstance(spec, str) else list(spec)
        names = [n.strip() for n in raw if n.strip()]
        if not names:
            raise ConfigError("--rungs is empty; valid rungs: " + ", ".join(RUNGS))
    unknown = [n for n in names if n not in RUNGS]
    if unknown:
        raise ConfigError(f"unknown rung(s) {', '.join(map(repr, unknown))}; valid rungs: {', '.join(RUNGS)}")
    notes = []
    if REFERENCE not in names:
        notes.append(f"added the reference rung {REFERENCE!r}: every rung is compared with it")
        names.insert(0, REFERENCE)
    order = list(RUNGS)
    names = sorted(dict.fromkeys(names), key=order.index)
    return [RUNGS[n] for n in names], notes
