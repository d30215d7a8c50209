"""Shared set-up of the real-weights tier: SmolLM2-135M-Instruct, built once and cached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROMPT_SETS = {
    "capital": (["The capital of France is", "The quick brown fox"], 8),
    "mixed": (["def fibonacci(n):", "Once upon a time, in a small village,", "1, 2, 3, 4,"], 4),
    "colors": (["The three primary colors are", "Water boils at a temperature of"], 6),
}
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real ``tensortap`` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "tensortap.cli.main", *args], capture_output=True,
                          text=True, env={**os.environ, **VLLM_ENV}, timeout=timeout)


def capture(model: Path, out: Path, engine: str, prompt_set: str, dtype: str = "float32",
            *extra: str) -> Path:
    """Capture ``prompt_set`` with ``engine`` into ``out`` (reused when already complete)."""
    prompts, new_tokens = PROMPT_SETS[prompt_set]
    args = ["capture", str(model), "--engine", engine, "--out", str(out), "--dtype", dtype,
            "--max-new-tokens", str(new_tokens), "--overwrite", *extra]
    for p in prompts:
        args += ["--prompt", p]
    r = cli(*args)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return out
