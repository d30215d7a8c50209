"""transformers adapter: load a model folder, generate greedily under capture, record token tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tensortap.capture.config import CaptureConfig
from tensortap.capture.session import CaptureSession
from tensortap.errors import TensortapError

DEFAULT_PROMPTS = ["Paris is the capital of", "The quick brown fox"]


def load_model(model_dir: str | Path, dtype: str | None = None):
    """Load a causal LM and its tokenizer from a local folder (no downloads)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise TensortapError("the hf engine needs transformers: pip install 'tensortap[hf]'") from None
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise TensortapError(f"{path}: not a model folder (no config.json)")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise TensortapError(f"unknown dtype {dtype!r}; use e.g. float32, bfloat16, float16")
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad folder
        # A broken or foreign folder is bad input, not a tensortap bug: one line, exit 2.
        first = (str(e).strip().splitlines() or [""])[0]
        raise TensortapError(f"{path}: cannot load the model ({type(e).__name__}: {first[:300]})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class TokenTableHook:
    """Records, for each root forward, which request and position every ``[B, T]`` row is.

    Rows are numbered row-major over ``(B, T)``; a padding row has request -1.
    """

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self.handle = None

    def attach(self, model: nn.Module) -> "TokenTableHook":
        # Registered after the session's own root hook, so session.step is already current.
        self.handle = model.register_forward_pre_hook(self._pre, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                return
            if not self.session.config.wants_step(self.session.step):
                return
            b, t = ids.shape
            pos = kwargs.get("position_ids")
            if not isinstance(pos, torch.Tensor) or tuple(pos.shape[-2:]) != (b, t):
                cache_pos = kwargs.get("cache_position")
                start = int(cache_pos[0]) if isinstance(cache_pos, torch.Tensor) and cache_pos.numel() else 0
                pos = torch.arange(start, start + t).expand(b, t)
            mask = kwargs.get("attention_mask")
            valid = torch.ones(b, t, dtype=torch.bool)
            if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == b:
                valid = mask[:, -t:].bool().cpu()
            req = torch.arange(b).unsqueeze(1).expand(b, t).clone()
            req[~valid] = -1
            position = pos.reshape(b, t).cpu().clone()
            position[~valid] = -1
            self.session.add_tokens(self.session.step, {
                "layout": "batch", "batch_shape": [b, t],
                "request": req.reshape(-1).tolist(),
                "position": position.reshape(-1).tolist(),
                "token_ids": ids.reshape(-1).cpu().tolist(),
            })
        except Exception as e:  # noqa: BLE001
            self.session.fail(f"token table failed: {type(e).__name__}: {e}")


def capture_generate(
    model_dir: str | Path,
    config: CaptureConfig,
    prompts: list[str] | None = None,
    max_new_tokens: int = 3,
    dtype: str | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Load (or take) a model, run greedy ``generate`` over ``prompts`` in one left-padded
    batch under capture, and return ``{"texts", "token_ids", "run"}``."""
    if model is None:
        model, tokenizer = load_model(model_dir, dtype)
    prompts = list(prompts or DEFAULT_PROMPTS)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    engine = {"name": "hf", "model_dir": str(model_dir), "prompts": prompts,
              "max_new_tokens": max_new_tokens}
    try:
        import transformers

        engine["version"] = transformers.__version__
    except ImportError:
        pass
    session = CaptureSession(model, config, engine=engine)
    with session:
        tokens = TokenTableHook(session).attach(model)
        try:
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
        finally:
            tokens.detach()
    new = out[:, batch["input_ids"].shape[1]:]
    return {
        "texts": tokenizer.batch_decode(new, skip_special_tokens=True),
        "token_ids": new.tolist(),
        "run": str(session.out),
    }
