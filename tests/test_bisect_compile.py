"""Compile-stage bisection on real torch.compile backends (CPU, gcc for inductor)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch._decomp import register_decomposition
from torch._inductor.decomposition import decompositions
from torch.library import custom_op

from tensortap.localize.bisect import bisect_compile


@custom_op("tensortap_test::scaled_gelu", mutates_args=())
def scaled_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


@scaled_gelu.register_fake
def _(x):
    return torch.empty_like(x)


class Act(nn.Module):
    def forward(self, x):
        return scaled_gelu(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.act = Act()
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def _net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(8, 32)


def test_clean_model_has_no_bad_stage(tmp_path):
    m, x = _net()
    res = bisect_compile(m, (x,), out=tmp_path / "b")
    assert res.first_bad_stage is None and res.first_divergence is None
    assert [s.stage for s in res.stages] == ["eager", "aot_eager", "aot_eager_decomp_partition", "inductor"]
    assert all(s.ok and s.hooks_fired for s in res.stages)


def test_wrong_inductor_decomposition_is_found_at_decomp_stage(tmp_path):
    op = torch.ops.tensortap_test.scaled_gelu.default

    # A subtly wrong decomposition, registered in Inductor's table only: eager and
    # aot_eager never use it, aot_eager_decomp_partition and inductor do.
    @register_decomposition(op, registry=decompositions)
    def wrong(x):
        return torch.nn.functional.gelu(x) * 1.001

    try:
        m, x = _net()
        res = bisect_compile(m, (x,), out=tmp_path / "b")
    finally:
        decompositions.pop(op, None)
    assert res.first_bad_stage == "aot_eager_decomp_partition"
    assert res.first_divergence["module"] == "act"
    by = {s.stage: s for s in res.stages}
    assert by["eager"].ok and by["aot_eager"].ok
    assert by["inductor"].ok is False
    assert by["aot_eager_decomp_partition"].observer_effect == 0.0
    assert res.first_divergence["res_error"] > 100 * res.first_divergence["ref_error"]
