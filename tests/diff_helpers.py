"""Real runs for the diff tests: tiny Llamas built on the fly and captured with tensortap.

Each run is built on first use and cached for the test session (per test module that
imports the fixture), so a test file pays only for the runs it uses.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap.capture.config import build_config
from tensortap.integrations.hf import capture_generate
from tensortap.testing import tiny_llama

PROMPTS = ["Paris is the capital of", "The quick brown fox"]
PLANTED = "model.layers.1.mlp.down_proj.weight"
PLANTED_MODULE = "model.layers.1.mlp.down_proj"
DELTA = 0.01


class TinyRuns:
    """Captured runs of the tiny Llama (fp32 unless named otherwise), built lazily."""

    def __init__(self, root: Path, model_dir: Path) -> None:
        self.root = root
        self.model_dir = model_dir

    def _capture(self, name: str, model_dir: Path, dtype: str | None = None, **cfg) -> Path:
        out = self.root / name
        capture_generate(model_dir, build_config(out=str(out), overwrite=True, durable=False, **cfg),
                         prompts=PROMPTS, max_new_tokens=3, dtype=dtype)
        return out

    @cached_property
    def bug_model(self) -> Path:
        return tiny_llama(self.root / "models" / "bug", perturb={PLANTED: DELTA})

    @cached_property
    def a(self) -> Path:
        return self._capture("a", self.model_dir)

    @cached_property
    def a_rerun(self) -> Path:
        return self._capture("a-rerun", self.model_dir)

    @cached_property
    def bug(self) -> Path:
        return self._capture("bug", self.bug_model)

    @cached_property
    def a_steps01(self) -> Path:
        return self._capture("a-steps01", self.model_dir, steps=[0, 1])

    @cached_property
    def bf16(self) -> Path:
        return self._capture("bf16", self.model_dir, dtype="bfloat16")

    @cached_property
    def bf16_rerun(self) -> Path:
        return self._capture("bf16-rerun", self.model_dir, dtype="bfloat16")

    @cached_property
    def bug_bf16(self) -> Path:
        return self._capture("bug-bf16", self.bug_model, dtype="bfloat16")

    @cached_property
    def stats_a(self) -> Path:
        return self._capture("stats-a", self.model_dir, mode="stats")

    @cached_property
    def stats_bug(self) -> Path:
        return self._capture("stats-bug", self.bug_model, mode="stats")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> TinyRuns:
    return TinyRuns(tmp_path_factory.mktemp("diff-runs"), tiny_model_dir)


# -- small plain-torch models for shapes, names and NaNs ----------------------------------------

class Affine(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + 0.5


class TwoStage(nn.Module):
    """``first`` then ``second``; attribute names are configurable to test rename maps."""

    def __init__(self, first: str = "encoder", second: str = "head", scale: float = 1.0,
                 unsqueeze: bool = False, nan: bool = False) -> None:
        super().__init__()
        self.names = (first, second)
        setattr(self, first, Affine())
        setattr(self, second, Affine(scale))
        self.unsqueeze = unsqueeze
        self.nan = nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = getattr(self, self.names[0])(x)
        if self.unsqueeze:
            h = h.unsqueeze(0)  # [1, T, H] where the other model has [T, H]
        y = getattr(self, self.names[1])(h)
        if self.nan:
            y = y.clone()
            y.view(-1)[3] = float("nan")
        return y


def capture_plain(model: nn.Module, out: Path, x: torch.Tensor | None = None, **cfg) -> Path:
    x = torch.linspace(-1, 1, 24).reshape(4, 6) if x is None else x
    with tt.capture(model, out, overwrite=True, durable=False, **cfg):
        model(x)
    return out
