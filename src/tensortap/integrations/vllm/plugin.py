"""The vLLM plugin: capture any vLLM program (``vllm serve`` included) from the environment.

Declared in pyproject.toml under the entry-point group ``vllm.general_plugins``, so vLLM
calls :func:`register` in each of its processes (API server, engine core, workers).
It does nothing unless ``TENSORTAP_DIR`` or ``TENSORTAP_CONFIG`` is set::

    TENSORTAP_DIR=runs/v vllm serve ./model

When active it wraps two vLLM methods, in that process only:

- ``EngineArgs.create_engine_config`` (API process, before the engine exists): switch
  on ``enforce_eager`` (no torch.compile, no CUDA graphs: hooks do not fire inside
  them), default prefix caching off (cached tokens skip the forward), give workers
  time to finish writing at shutdown (``shutdown_timeout``), say so on stderr, and
  create the run directory once;
- ``Worker.load_model`` (each worker): once the model is loaded, attach a capture to it
  (worker.py; everything done to vLLM objects there is per instance) and finalize the
  run when vLLM shuts the worker down.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

_ENV_VARS = ("TENSORTAP_CONFIG", "TENSORTAP_DIR")

_config: Any = None  # the CaptureConfig of this process once active
_prepared: set[Path] = set()
_locks: list[Any] = []
_originals: list[tuple[type, str, Any]] = []


def register() -> None:
    """vLLM plugin entry point. Zero cost unless TENSORTAP_DIR / TENSORTAP_CONFIG is set.

    A bad config raises here, so vLLM stops at startup with tensortap's one-line message.
    """
    if not any(os.environ.get(k) for k in _ENV_VARS):
        return
    if _config is not None:
        return
    from tensortap.capture.config import config_from_env

    activate(config_from_env())


def activate(config: Any) -> None:
    """Install the two wrappers for ``config`` (what register() does when the env asks)."""
    global _config
    if _config is not None:
        return
    from tensortap.integrations.vllm import compat

    _config = config
    _wrap(compat.engine_args_class(), compat.ENGINE_CONFIG_METHOD, _config_wrapper)
    _wrap(compat.worker_class_with_load_model(), compat.WORKER_LOAD_METHOD, _load_model_wrapper)


def unregister() -> None:
    """Remove the wrappers (tests; a process that wants to stop capturing new engines)."""
    global _config
    while _originals:
        cls, name, original = _originals.pop()
        if original is None:
            delattr(cls, name)  # it was inherited: drop our shadowing wrapper
        else:
            setattr(cls, name, original)
    _config = None
    _prepared.clear()


def _wrap(cls: type, name: str, make: Callable[[Callable], Callable]) -> None:
    own = cls.__dict__.get(name)
    original = own if own is not None else getattr(cls, name)
    wrapper = functools.wraps(original)(make(original))
    wrapper.__tensortap_wrapped__ = original  # type: ignore[attr-defined]
    _originals.append((cls, name, own))
    setattr(cls, name, wrapper)


def _say(message: str) -> None:
    print(f"tensortap: {message}", file=sys.stderr, flush=True)


# -- API process: before the engine is built ----------------------------------------------
def _config_wrapper(original: Callable) -> Callable:
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        from tensortap.integrations.vllm import compat
        from tensortap.integrations.vllm.worker import PREFIX_CACHING_WARNING

        changed = compat.make_args_capture_friendly(self)
        if changed.get("enforce_eager"):
            _say("capture needs eager execution: torch.compile and CUDA graphs switched off "
                 "(enforce_eager=True)")
        if "enable_prefix_caching" in changed:
            _say("prefix caching switched off while capturing (cached tokens would skip the "
                 "forward); --enable-prefix-caching keeps it on, with gaps in the capture")
        if "shutdown_timeout" in changed:
            _say(f"shutdown timeout raised to {changed['shutdown_timeout']} s so that workers can "
                 "finish writing the run when the server stops")
        if changed.get("prefix_caching_forced_on"):
            _say(f"WARNING: {PREFIX_CACHING_WARNING}")
        vllm_config = original(self, *args, **kwargs)
        _prepare_run_dir()
        return vllm_config

    return create_engine_config


def _prepare_run_dir() -> None:
    """Create (or, with overwrite, replace) the run directory, once per process.

    Done here, before any worker exists, so that ranks never race to create it and a
    non-empty directory stops the server at startup instead of mixing two runs.
    """
    from tensortap.capture.session import prepare_out_dir

    out = Path(_config.out).resolve()
    if out not in _prepared:
        # The writer lock stays held by this (API) process until it exits: the server's
        # workers write the ranks, and no second capture may start in this run meanwhile.
        _locks.append(prepare_out_dir(out, _config.overwrite))
        _prepared.add(out)
        _say(f"capturing into {out}")


# -- workers: after the model is loaded ------------------------------------------------------
def _load_model_wrapper(original: Callable) -> Callable:
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        _attach(self)
        return result

    return load_model


def _attach(worker: Any) -> None:
    from tensortap.errors import TensortapError
    from tensortap.integrations.vllm.worker import attach

    try:
        attach(worker, _config, "plugin")
    except TensortapError:
        raise  # the engine cannot be captured (compiled, CUDA graphs): refuse at startup
    except Exception as e:  # noqa: BLE001 - a tensortap bug must not take the engine down
        _say(f"ERROR: capture could not attach, the engine runs WITHOUT capture: "
             f"{type(e).__name__}: {e}")
