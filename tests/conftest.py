"""Shared fixtures: tiny models built on the fly (seeded, no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tensortap.testing import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    from tensortap.integrations.hf import load_model

    return load_model(tiny_model_dir)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `tensortap` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tensortap.cli.main", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout,
    )


def capture_cli(engine: str, model, out, prompts: list[str], max_new_tokens: int, *extra: str,
                env: dict | None = None) -> str:
    """``tensortap capture`` of ``model`` on ``prompts`` in a subprocess; asserts success."""
    args = ["capture", str(model), "--engine", engine, "--out", str(out),
            "--max-new-tokens", str(max_new_tokens)]
    for p in prompts:
        args += ["--prompt", p]
    r = run_cli(*args, *extra, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return str(out)
