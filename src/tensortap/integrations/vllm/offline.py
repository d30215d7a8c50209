"""``capture_generate``: load a model folder in vLLM and generate greedily under capture.

Same contract as :func:`tensortap.integrations.hf.capture_generate`, so the CLI's
``tensortap capture MODEL --engine vllm`` and the HF path are interchangeable.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tensortap.capture.config import CaptureConfig
from tensortap.errors import TensortapError
from tensortap.integrations.hf import DEFAULT_PROMPTS  # the same prompts as the HF engine
from tensortap.integrations.vllm import compat
from tensortap.integrations.vllm.llm import capture


@contextmanager
def _engine_core_in_process() -> Iterator[None]:
    """Build the LLM with its engine core in this process.

    Then ``collective_rpc`` hands tensortap's functions to the workers directly (or by
    the executor's own pickling for TP > 1) instead of through the engine-core socket,
    which refuses functions unless VLLM_ALLOW_INSECURE_SERIALIZATION=1. It also spares
    one process. Only the variable this helper sets is restored afterwards.
    """
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    old = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_llm(model_dir: str | Path, dtype: str | None = None, **llm_kwargs: Any) -> Any:
    """A ``vllm.LLM`` ready for capture: eager, no prefix caching, seeded, local files only."""
    # vLLM logs to stdout by default, mixing its INFO lines into what the caller prints;
    # send them to stderr unless the user chose (vLLM reads this when it is imported).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        from vllm import LLM
    except ImportError as e:
        raise TensortapError(f"the vllm engine needs vLLM: pip install 'tensortap[vllm]' ({e})") from None
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise TensortapError(f"{path}: not a model folder (no config.json)")
    kwargs: dict[str, Any] = {"model": str(path), "enforce_eager": True,
                              "enable_prefix_caching": False, "seed": 0, "dtype": dtype or "auto"}
    kwargs.update(llm_kwargs)
    with _engine_core_in_process():
        try:
            return LLM(**kwargs)
        except (ValueError, KeyError, NotImplementedError, OSError) as e:
            # vLLM rejects a folder it cannot run (unknown architecture, missing or
            # mismatched weights, unsupported feature on this platform) with these: bad
            # input, not a tensortap bug, so one line.
            first = (str(e).strip().splitlines() or [""])[0]
            raise TensortapError(f"{path}: vLLM cannot load the model ({type(e).__name__}: "
                                 f"{first[:300]})") from e


def capture_generate(
    model_dir: str | Path,
    config: CaptureConfig,
    prompts: list[str] | None = None,
    max_new_tokens: int = 3,
    dtype: str | None = None,
    llm: Any = None,
    llm_kwargs: dict[str, Any] | None = None,
    tensor_parallel_size: int | None = None,
    model_impl: str | None = None,
) -> dict[str, Any]:
    """Run greedy generation of ``prompts`` in vLLM under capture.

    Returns ``{"texts", "token_ids", "run"}``: the generated text and token ids of each
    prompt (new tokens only) and the run directory. Pass ``llm`` to reuse an engine, or
    ``llm_kwargs`` (e.g. ``{"tensor_parallel_size": 2, "max_model_len": 512}``) to shape
    the one built here; an engine built here is shut down before returning.
    ``tensor_parallel_size`` and ``model_impl`` (``"transformers"``: vLLM's Transformers
    backend) are shorthands for those keys of ``llm_kwargs``.
    """
    if tensor_parallel_size is not None:
        llm_kwargs = {**(llm_kwargs or {}), "tensor_parallel_size": tensor_parallel_size}
    if model_impl is not None:
        llm_kwargs = {**(llm_kwargs or {}), "model_impl": model_impl}
    from vllm import SamplingParams

    prompts = list(prompts or DEFAULT_PROMPTS)
    own = llm is None
    if own:
        llm = load_llm(model_dir, dtype, **(llm_kwargs or {}))
    try:
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        extra = {"model_dir": str(model_dir), "prompts": prompts, "max_new_tokens": max_new_tokens}
        with capture(llm, config=config, engine_extra=extra) as cap:
            outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        if own:
            compat.llm_shutdown(llm)
    return {
        "texts": [o.outputs[0].text for o in outputs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
        "run": str(cap.path),
    }
