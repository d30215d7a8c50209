"""Capture of plain nn.Modules: paths, kwargs, calls, filters, alias safety, hook removal."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap.errors import ConfigError, RunFormatError, TensortapError


@dataclass
class Out:
    hidden: torch.Tensor
    aux: tuple


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, scale=1.0, mask=None):
        y = self.lin(x) * scale
        return {"y": y, "pair": (y + 1, None), "n": 3}


class Shared(nn.Module):
    def forward(self, x):
        return x * 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.shared = Shared()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    def forward(self, x):
        d = self.inner(x, scale=0.5, mask=torch.ones(2, 4))
        h = self.shared(d["y"])
        for layer in self.layers:
            h = self.shared(layer(h))
        return Out(hidden=h, aux=(h.sum(), 7))


def _net():
    torch.manual_seed(0)
    return Net().eval()


def _keys(run, **kw):
    return [(r.module, r.call, r.role, r.path) for r in run.records(**kw)]


def test_paths_kwargs_and_nesting(tmp_path):
    net = _net()
    x = torch.randn(2, 4)
    with tt.capture(net, tmp_path / "r", modules=[r"^inner$", r"^$"]):
        net(x)
    run = tt.open(tmp_path / "r")
    assert run.status == "complete"
    keys = _keys(run, module="^inner$")
    assert ("inner", 0, "input", "0") in keys
    assert ("inner", 0, "input", "scale") in keys        # keyword scalar -> value record
    assert ("inner", 0, "input", "mask") in keys         # keyword tensor
    assert ("inner", 0, "output", "y") in keys
    assert ("inner", 0, "output", "pair.0") in keys
    assert ("inner", 0, "output", "pair.1") in keys      # None kept as a value
    assert ("inner", 0, "output", "n") in keys
    scale = run.records(module="^inner$", path="^scale$")[0]
    assert scale.kind == "value" and scale.value == 0.5
    root_out = {r.path for r in run.records(module="^$", role="output")}
    assert root_out == {"hidden", "aux.0", "aux.1"}      # dataclass fields by name
    lone = run.records(module="^$", role="input")[0]
    assert lone.path == "0"
    assert torch.equal(run.load(lone), x)


def test_lone_tensor_output_has_empty_path_and_values_match(tmp_path):
    net = _net()
    x = torch.randn(2, 4)
    seen = {}
    h = net.layers[1].register_forward_hook(lambda m, a, o: seen.setdefault("o", o.detach().clone()))
    with tt.capture(net, tmp_path / "r", modules=[r"layers\.1$"]):
        net(x)
    h.remove()
    run = tt.open(tmp_path / "r")
    (out,) = run.records(role="output")
    assert out.path == "" and out.shape == (2, 4) and out.dtype == "float32"
    assert torch.equal(run.load(out), seen["o"])
    st = out.stats
    assert st.numel == 8 and st.nan == 0
    assert st.max == pytest.approx(float(seen["o"].max()))
    assert st.l2 == pytest.approx(float(seen["o"].double().norm()))


def test_shared_module_call_counts_and_call_filter(tmp_path):
    net = _net()
    with tt.capture(net, tmp_path / "all", modules=["^shared$"], roles=["outputs"]):
        net(torch.randn(2, 4))
        net(torch.randn(2, 4))
    run = tt.open(tmp_path / "all")
    assert [(r.step, r.call) for r in run.records()] == [(s, c) for s in (0, 1) for c in range(4)]
    with tt.capture(net, tmp_path / "one", modules=["^shared$:2"], roles=["outputs"]):
        net(torch.randn(2, 4))
    assert [(r.step, r.call) for r in tt.open(tmp_path / "one").records()] == [(0, 2)]


def test_step_filters_and_skip(tmp_path):
    net = _net()
    with tt.capture(net, tmp_path / "r", modules=[r"layers\.0$"], steps=[1, 3], roles=["outputs"]):
        for _ in range(5):
            net(torch.randn(2, 4))
    assert tt.open(tmp_path / "r").steps() == [1, 3]
    with tt.capture(net, tmp_path / "s", modules=[r"layers\.0$"], skip_steps=2, roles=["outputs"]):
        for _ in range(4):
            net(torch.randn(2, 4))
    assert tt.open(tmp_path / "s").steps() == [2, 3]


def test_roles_layers_and_max_numel(tmp_path):
    net = _net()
    with tt.capture(net, tmp_path / "r", layers=[2], roles=["inputs"], max_numel=4):
        net(torch.randn(2, 4))
    run = tt.open(tmp_path / "r")
    mods = set(run.modules())
    assert "layers.2" in mods and "layers.0" not in mods and "layers.1" not in mods
    assert "inner" in mods                                # outside layers: kept
    assert {r.role for r in run.records()} == {"input"}
    big = run.records(module=r"layers\.2$")[0]
    assert big.kind == "stats" and not big.has_data and big.stats.numel == 8
    with pytest.raises(RunFormatError, match="statistics only"):
        run.load(big)


def test_alias_safety_against_in_place_mutation(tmp_path):
    class Mutator(nn.Module):
        def forward(self, x):
            x.add_(100.0)          # mutates its input in place, like a fused add+norm
            return x

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = Mutator()

        def forward(self, x):
            return self.b(self.a(x))

    torch.manual_seed(1)
    m = M()
    x = torch.randn(2, 3)
    expected = m.a(x).detach().clone()
    with tt.capture(m, tmp_path / "r", modules=["^a$", "^b$"]):
        m(x)
    run = tt.open(tmp_path / "r")
    a_out = run.records(module="^a$", role="output")[0]
    b_in = run.records(module="^b$", role="input")[0]
    assert torch.equal(run.load(a_out), expected)
    assert torch.equal(run.load(b_in), expected)        # copied before the kernel mutated it


def test_inference_mode_and_no_grad(tmp_path):
    net = _net()
    with torch.inference_mode(), tt.capture(net, tmp_path / "r", modules=[r"layers\.2$"]):
        net(torch.randn(2, 4))
    run = tt.open(tmp_path / "r")
    assert len(run.records(role="output")) == 1
    run.load(run.records(role="output")[0])


def test_hooks_removed_after_capture_and_after_error(tmp_path):
    net = _net()

    def hook_counts():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())

    assert hook_counts() == 0
    with tt.capture(net, tmp_path / "r"):
        assert hook_counts() > 0
        net(torch.randn(2, 4))
    assert hook_counts() == 0
    with pytest.raises(RuntimeError):
        with tt.capture(net, tmp_path / "e"):
            net(torch.randn(2, 5))                      # wrong shape: the model raises
    assert hook_counts() == 0
    run = tt.open(tmp_path / "e")
    assert run.status == "incomplete" and "RuntimeError" in run.reason


def test_import_registers_nothing():
    import importlib
    import subprocess
    import sys

    code = ("import torch.nn.modules.module as M; import tensortap; "
            "print(len(M._global_forward_hooks), len(M._global_forward_pre_hooks))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]
    assert importlib.import_module("tensortap")


def test_never_fired_is_reported_and_strict(tmp_path):
    class Skipper(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.unused.forward(self.used(x))   # .forward() bypasses hooks

    m = Skipper()
    with tt.capture(m, tmp_path / "r"):
        m(torch.randn(1, 2))
    run = tt.open(tmp_path / "r")
    assert any("never fired" in w and "'unused'" in w for w in run.warnings)
    assert run.info["summary"]["never_fired"] == ["unused"]
    with pytest.raises(TensortapError, match="never fired"):
        with tt.capture(m, tmp_path / "s", strict=True):
            m(torch.randn(1, 2))


def test_output_dir_rules(tmp_path):
    net = _net()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        tt.capture(net, tmp_path / "busy").start()
    with pytest.raises(ConfigError, match="not a tensortap run"):
        tt.capture(net, tmp_path / "busy", overwrite=True).start()
    assert (tmp_path / "busy" / "keep.txt").exists()
    with tt.capture(net, tmp_path / "r"):
        net(torch.randn(2, 4))
    with tt.capture(net, tmp_path / "r", overwrite=True, modules=["^shared$"]):
        net(torch.randn(2, 4))
    assert set(tt.open(tmp_path / "r").modules()) == {"shared"}


def test_dtypes_roundtrip(tmp_path):
    class Cast(nn.Module):
        def forward(self, x):
            return x.to(torch.bfloat16), x.to(torch.float16), (x > 0), x.to(torch.int64)

    m = Cast()
    x = torch.randn(3, 5)
    with tt.capture(m, tmp_path / "r", roles=["outputs"]):
        outs = m(x)
    run = tt.open(tmp_path / "r")
    recs = run.records(role="output")
    assert [r.dtype for r in recs] == ["bfloat16", "float16", "bool", "int64"]
    for rec, ref in zip(recs, outs):
        assert torch.equal(run.load(rec), ref)
