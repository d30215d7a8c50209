"""The noise model (compare.noise, compare.judge): per-token judgement, carried vs own error.

Real captures of small modules built to show what whole-tensor metrics get wrong on real
models: a token with massive activations that hides error elsewhere, and RMSNorm that seems
to amplify error it only re-weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap.compare.noise import GAIN, own_noise, unit_roundoff


class Tap(nn.Module):
    """Identity in run A; in run B a planted change on some rows."""

    def __init__(self, rows=None, scale: float = 1.0, add: float = 0.0) -> None:
        super().__init__()
        self.rows, self.scale, self.add = rows, scale, add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        if self.rows is not None:
            y[self.rows] = y[self.rows] * self.scale + self.add
        return y


class RMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Net(nn.Module):
    def __init__(self, tap: Tap, width: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(width, width)
        self.tap = tap
        self.norm = RMSNorm(width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.tap(self.lin(x))))


def _massive_input(width: int = 64, tokens: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, width, generator=gen)
    x[0] *= 1e4  # one token with "massive activations", as real LLMs have
    return x


def _run(tmp_path, name: str, tap: Tap) -> str:
    model = Net(tap).eval()
    out = tmp_path / name
    with tt.capture(model, out), torch.no_grad():
        model(_massive_input())
    return str(out)


def test_massive_token_does_not_mask_error_on_another_token(tmp_path):
    a = _run(tmp_path, "a", Tap())
    b = _run(tmp_path, "b", Tap(rows=[3], scale=1.01))
    rep = tt.diff(a, b)
    fd = rep.first_divergence
    assert rep.verdict == "diverged" and fd is not None
    assert (fd.module, fd.origin, fd.metric) == ("tap", "introduced", "token_rel_l2")
    row = rep.rows[fd.row]
    assert row.worst_row == [3]
    assert row.token_rel_l2 == pytest.approx(0.01, rel=1e-3)
    # The whole tensor's rel_l2 is owned by token 0: it would have called this fp32 noise.
    assert row.rel_l2 < 1e-5


def test_rmsnorm_does_not_fake_amplification(tmp_path):
    """An absolute error on every token is a small relative error on the massive token and a
    large one elsewhere: whole-tensor figures then see RMSNorm 'amplify' it; per token it
    only passes it on."""
    a = _run(tmp_path, "a", Tap())
    b = _run(tmp_path, "b", Tap(rows=slice(None), add=1e-3))
    rep = tt.diff(a, b)
    by = {(r.module, r.role, r.path): r for r in rep.rows}
    tap, norm = by[("tap", "output", "")], by[("norm", "output", "")]
    assert tap.status == "diverged" and tap.origin == "introduced"
    assert rep.first_divergence.module == "tap"
    assert norm.rel_l2 / norm.input_rel_l2 > 8           # the whole-tensor view: fake x8+
    assert norm.status == "ok" and norm.carried_from == "inputs"
    assert norm.growth < 2.0 and norm.token_rel_l2 <= norm.limit
    assert {r.module for r in rep.rows if r.status == "diverged"} == {"tap"}


def test_clean_rerun_agrees_and_containers_carry_their_children(tmp_path):
    a = _run(tmp_path, "a", Tap())
    b = _run(tmp_path, "b", Tap(rows=[5], add=0.5))
    rep = tt.diff(a, b)
    root = [r for r in rep.rows if r.module == "" and r.role == "output"][0]
    assert root.status == "ok" and root.carried_from == "children" and root.token_rel_l2 > 1e-3
    assert tt.diff(a, _run(tmp_path, "a2", Tap())).verdict == "agree"


def test_own_noise_follows_dtype_and_reduction_length():
    fp32 = own_noise("float32", "float32", 576)
    # (sqrt(2) + 10 sqrt(576)) u / sqrt(3), u = 2^-24
    assert fp32 == pytest.approx((math.sqrt(2) + GAIN * 24) * 2.0 ** -24 / math.sqrt(3))
    assert own_noise("float32", "float32", 2304) > fp32                    # longer sums, more noise
    same16 = own_noise("bfloat16", "bfloat16", 576)
    mixed = own_noise("float32", "bfloat16", 576)
    assert same16 < mixed                                                  # re-rounded inputs add GAIN u
    assert mixed == pytest.approx(((math.sqrt(2) + GAIN) * unit_roundoff("bfloat16")
                                   + GAIN * 24 * unit_roundoff("float32")) / math.sqrt(3))
    # 16-bit kernels accumulate in float32: the reduction term does not scale with bf16's u.
    assert own_noise("bfloat16", "bfloat16", 10_000) < 2 * same16


def test_top_growth_ranks_the_module_that_adds_error_first(tmp_path):
    a = _run(tmp_path, "a", Tap())
    b = _run(tmp_path, "b", Tap(rows=[2, 6], scale=0.99))
    rep = tt.diff(a, b, top=3)
    assert rep.top_growth and rep.top_growth[0]["module"] == "tap"
    assert len(rep.top_growth) <= 3
    doc = rep.to_dict()
    assert doc["top_growth"][0]["module"] == "tap" and doc["top_growth"][0]["growth"] > 100


def _run_stats(tmp_path, name: str, tap: Tap) -> str:
    model = Net(tap).eval()
    out = tmp_path / name
    with tt.capture(model, out, mode="stats"), torch.no_grad():
        model(_massive_input())
    return str(out)


def test_statistics_only_runs_find_a_planted_change(tmp_path):
    """Estimates are whole-tensor figures (no per-token rows): a planted change is still the
    first divergence, found from the sketches, and a clean stats-mode rerun agrees."""
    a = _run(tmp_path, "a", Tap())
    bug = _run_stats(tmp_path, "bug", Tap(rows=[3], scale=1.5))
    rep = tt.diff(a, bug)
    fd = rep.first_divergence
    assert fd is not None and fd.module == "tap" and fd.estimated and fd.origin == "introduced"
    assert tt.diff(a, _run_stats(tmp_path, "clean", Tap())).verdict == "agree"


def test_report_displays_in_rich_and_notebooks(tmp_path):
    from rich.console import Console

    rep = tt.diff(_run(tmp_path, "a", Tap()), _run(tmp_path, "b", Tap(rows=[3], scale=1.01)))
    console = Console(record=True, width=200)
    console.print(rep)
    text = console.export_text()
    assert "DIVERGED at tap[0].output@0" in text and "introduced" in text
    html = rep._repr_html_()
    assert html.startswith("<!doctype html") or "<html" in html[:200]
