"""The compiled kernels (numba) against the numpy/torch fallback and the definitions.

Both paths must give the same statistics, sketches and pair metrics (up to float64
summation order), and the kernels must never touch memory outside their arrays (they run
without bounds checks). Speed is measured by bench/run.py, never here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap import kernels
from tensortap.compare.metrics import norm_of_difference, pair_metrics
from tensortap.store.sketch import (SKETCH_DIM, CountSketch, decode_sketch, encode_sketch, finish,
                                    sketch)
from tensortap.store.stats import PIECE, _stats_reference, stat_sums, tensor_stats


def test_the_kernels_load_here():
    # The test extra installs numba: a broken install must fail here, not quietly fall back
    # (the rest of this file would then compare the fallback with itself).
    assert kernels.load(), kernels.status()
    assert kernels.name() == "numba"
    assert kernels.get().WIDTH == SKETCH_DIM


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(11)


TENSORS = {
    "f32 several pieces": lambda g: torch.randn(PIECE * 2 + 12345, generator=g) * 3 + 1,
    "f32 one partial row": lambda g: torch.randn(100, generator=g),
    "f32 one row": lambda g: torch.randn(SKETCH_DIM, generator=g),
    "f32 row and one": lambda g: torch.randn(SKETCH_DIM + 1, generator=g),
    "f32 with zeros and -0": lambda g: torch.cat([torch.randn(1000, generator=g), torch.zeros(77),
                                                   -torch.zeros(5)]),
    "f32 2-d": lambda g: torch.randn(256, 1376, generator=g),
    "f64 mean >> std": lambda g: torch.randn(5000, generator=g, dtype=torch.float64) * 1e-3 + 5e3,
    "f32 mean >> std": lambda g: torch.randn(5000, generator=g) * 1e-2 + 1e3,
    "bf16 across pieces": lambda g: torch.randn(PIECE + 1000, generator=g).to(torch.bfloat16),
    "f16": lambda g: torch.randn(3001, generator=g).to(torch.float16),
    "int8": lambda g: torch.randint(-128, 128, (999,), generator=g).to(torch.int8),
    "uint8": lambda g: torch.randint(0, 256, (999,), generator=g).to(torch.uint8),
    "int16": lambda g: torch.randint(-30000, 30000, (999,), generator=g).to(torch.int16),
    "complex64": lambda g: torch.randn(333, generator=g, dtype=torch.complex64),
    "scalar": lambda g: torch.tensor(2.5),
    "all zeros": lambda g: torch.zeros(513),
    "f32 huge values": lambda g: torch.tensor([3e38, -3e38, 1.0]),
}


def _assert_stats_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if v is None:
            assert got[k] is None, (what, k)
        elif k in ("nan", "inf", "zero", "numel", "min", "max", "absmax"):
            assert got[k] == v, (what, k)  # counts and extremes are exact
        else:
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-300), (what, k)


@pytest.mark.parametrize("name", list(TENSORS))
def test_kernel_statistics_equal_the_fallback_and_the_definition(name):
    t = TENSORS[name](_g())
    fast = tensor_stats(t).to_json()
    with kernels.disabled():
        assert kernels.loaded() is None
        slow = tensor_stats(t).to_json()
    ref = _stats_reference(t).to_json()
    _assert_stats_close(fast, ref, f"{name}: kernel vs reference")
    _assert_stats_close(slow, ref, f"{name}: fallback vs reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kernel_sketch_equals_the_fallback_wherever_the_tensor_is_split(dtype):
    t = (torch.randn(PIECE + 5 * SKETCH_DIM + 61, generator=_g()) * 2 - 0.5).to(dtype)
    with kernels.disabled():
        want = torch.tensor(sketch(t), dtype=torch.float64)
    n = t.numel()
    for cut in (0, 1, SKETCH_DIM - 1, SKETCH_DIM, SKETCH_DIM + 1, 300, PIECE - 3, n - 1, n):
        sk = CountSketch()
        parts = stat_sums(t, 0, cut, sk) + stat_sums(t, cut, None, sk)  # two threads' halves
        assert torch.allclose(sk.acc, want, rtol=1e-12, atol=1e-9), cut
        with kernels.disabled():
            whole = stat_sums(t)
        assert parts.total == pytest.approx(whole.total, rel=1e-12, abs=1e-9)
        assert parts.sumsq == pytest.approx(whole.sumsq, rel=1e-12)
        assert (parts.mn, parts.mx, parts.zeros) == (whole.mn, whole.mx, whole.zeros)


def test_a_sketch_of_data_with_nan_or_inf_counts_them_as_zero_on_both_paths():
    t = torch.randn(1000, generator=_g())
    t[3], t[500], t[999] = float("nan"), float("inf"), -float("inf")
    clean = sketch(t.nan_to_num(0.0, 0.0, 0.0))  # sketch() zeroes them itself, too
    for off in (False, True):
        sk = CountSketch()
        if off:
            with kernels.disabled():
                tensor_stats(t, sketch=sk)
                got = finish(sk, t)
        else:
            tensor_stats(t, sketch=sk)
            got = finish(sk, t)
        assert got == pytest.approx(clean, rel=1e-12, abs=1e-12)


SENTINEL = np.uint64(0x7FF0_0000_0000_0001)


def test_the_kernels_never_write_outside_their_arrays():
    """They run without bounds checks: the only array they write, the sketch, is a view
    into a larger buffer here, and every element around it must keep its sentinel, for
    every head/body/tail shape, with a sketch and with the one-element placeholder."""
    k = kernels.get()
    w = k.WIDTH
    rng = np.random.default_rng(0)
    signs = np.ones(64)
    for n in (1, 2, w - 1, w, w + 1, 2 * w - 1, 2 * w, 2 * w + 1, 1000):
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal(n).astype(dtype)
            for base in (0, 1, w - 1, w, w + 5):
                for sketching, size in ((True, w), (False, 1)):
                    # Signalling NaNs: even a write of "x + 0.0" changes their bits.
                    bits = np.full(3 * w, SENTINEL, dtype=np.uint64)
                    view = bits.view(np.float64)[w:w + size]
                    if sketching:
                        view[:] = 0.0
                    k.fused_stats(x, base, signs, view, sketching)
                    outside = np.concatenate([bits[:w], bits[w + size:]])
                    assert (outside == SENTINEL).all(), (n, dtype, base, sketching)
                    if not sketching:
                        assert bits[w] == SENTINEL, (n, dtype, base)


# -- pair metrics -------------------------------------------------------------------------------
def _pairs():
    g = _g()
    a = torch.randn(4099, generator=g)
    yield "f32", a, a + 1e-3 * torch.randn(4099, generator=g)
    yield "f32 vs f64", a, a.double() + 1e-6
    yield "bf16", a.bfloat16(), (a * 1.01).bfloat16()
    yield "f16 vs f32", a.half(), a
    yield "short", a[:100], a[:100] * 2
    z = torch.zeros(1000)
    b = z.clone()
    b[700], b[5], b[300] = 1.0, -1.0, 1.0  # a three-way tie: the first index wins
    yield "ties", z, b
    yield "2-d logits-like", torch.randn(7, 300, generator=g), torch.randn(7, 300, generator=g)
    c = torch.randn(4000, 3, generator=g)
    yield "a classifier's short rows", c, c + 0.1 * torch.randn(4000, 3, generator=g)
    nan = a.clone()
    nan[10], nan[20] = float("nan"), float("inf")
    yield "nan and inf", a, nan


FIELDS = ("err", "norm_a", "norm_b", "dot", "max_abs", "mean_abs")
EXACT = ("numel", "fail_frac", "nan_mismatch", "inf_mismatch", "worst_flat", "worst_a", "worst_b")


@pytest.mark.parametrize("logits", [False, True])
def test_kernel_pair_metrics_equal_the_walk(logits):
    for name, a, b in _pairs():
        fast = pair_metrics(a, b, 1e-4, 1e-3, logits=logits, maybe_equal=False)
        with kernels.disabled():
            slow = pair_metrics(a, b, 1e-4, 1e-3, logits=logits, maybe_equal=False)
        for f in FIELDS:
            assert getattr(fast, f) == pytest.approx(getattr(slow, f), rel=1e-12, abs=1e-300), (name, f)
        for f in EXACT:
            assert getattr(fast, f) == getattr(slow, f), (name, f)
        if logits:
            assert fast.top1_agree == slow.top1_agree, name
            if slow.kl is None:  # NaN/Inf in a row
                assert fast.kl is None, name
            else:
                assert fast.kl == pytest.approx(slow.kl, rel=1e-12, abs=1e-15), name
        if name == "ties":
            assert fast.worst_flat == 5
        with kernels.disabled():
            slow_norm = norm_of_difference(a, b)
        assert norm_of_difference(a, b) == pytest.approx(slow_norm, rel=1e-12), name


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-6])
def test_logits_kl_and_top1_equal_the_definition(scale):
    """KL(p_a || p_b) per row, averaged, against log_softmax in float64, from differences
    of order one down to fp32 noise (a KL of ~1e-13), with row maxima far from zero."""
    g = _g()
    a = torch.randn(6, 2000, generator=g, dtype=torch.float64) * 4 + 30.0
    b = a + scale * torch.randn(6, 2000, generator=g, dtype=torch.float64)
    a, b = a.float(), b.float()
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    want_kl = float((la.exp() * (la - lb)).sum(-1).mean())
    want_top1 = float((a.argmax(-1) == b.argmax(-1)).double().mean())
    for off in (False, True):
        if off:
            with kernels.disabled():
                m = pair_metrics(a, b, 1e-4, 1e-3, logits=True)
        else:
            m = pair_metrics(a, b, 1e-4, 1e-3, logits=True)
        assert m.top1_agree == want_top1
        # Both are float64 evaluations exact to ~1e-16 x the rows' log-sum-exp (~37 here).
        assert m.kl == pytest.approx(want_kl, rel=1e-6, abs=1e-14), (scale, off)
    assert want_kl > (1e-12 if scale == 1e-6 else 1e-8)


def _exact_kl(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of KL(softmax a || softmax b), in 40-digit arithmetic (mpmath); a
    token that is -inf in A adds nothing."""
    import mpmath
    with mpmath.workdps(40):
        total = mpmath.mpf(0)
        for ra, rb in zip(a.double().tolist(), b.double().tolist()):
            xa = [mpmath.mpf(v) for v in ra]
            xb = [mpmath.mpf(v) for v in rb]
            la = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xa))
            lb = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xb))
            total += mpmath.fsum(mpmath.exp(u - la) * ((u - la) - (v - lb))
                                 for u, v in zip(xa, xb) if u != -mpmath.inf)
        return float(total / len(a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("centre", [0.0, 30.0])
def test_logits_kl_is_within_float64_rounding_of_the_exact_value(dtype, centre):
    """Both paths, against 40-digit arithmetic: the error stays at float64 rounding of the
    KL's own terms (~1e-16), whatever the rows' log-sum-exp. A difference of two
    log-sum-exps was off by ~1.6e-15 here (rounded at ~9-40), which is 0.1 % of a KL of
    fp32 noise; the ratio of the shifted sums is not."""
    g = _g()
    for scale in (1.0, 1e-3, 1e-6):
        a = torch.randn(3, 1500, generator=g, dtype=torch.float64) * 3 + centre
        b = a + scale * torch.randn(3, 1500, generator=g, dtype=torch.float64)
        a, b = a.to(dtype), b.to(dtype)
        want = _exact_kl(a, b)
        for off in (False, True):
            if off:
                with kernels.disabled():
                    got = pair_metrics(a, b, 1e-4, 1e-3, logits=True, maybe_equal=False).kl
            else:
                got = pair_metrics(a, b, 1e-4, 1e-3, logits=True, maybe_equal=False).kl
            assert got == pytest.approx(want, rel=1e-12, abs=4e-16), (scale, off)


def test_the_logits_row_sums_are_exact_to_an_ulp_or_two():
    """The row sums behind the log-sum-exps, against ``math.fsum`` of the same float64
    terms, for row lengths around the lanes' count up to a real vocabulary's: within
    2.5e-16 relative (plain lanes, added one after the other, were off by up to 1.5e-15:
    a KL error of that size). Also: the pass rewrites ``e`` as B's shifted row."""
    k = kernels.get()
    rng = np.random.default_rng(5)
    w = k.LANES
    for v in (1, 2, w - 1, w, w + 1, 3 * w + 5, 4099, 32000, 151936):
        for dtype in (np.float32, np.float64):
            a = (rng.standard_normal((3, v)) * 3).astype(dtype)
            b = (a + 1e-2 * rng.standard_normal((3, v))).astype(dtype)
            shift_a, shift_b = a.max(axis=1).astype(np.float64), b.max(axis=1).astype(np.float64)
            e = np.empty((3, v))
            k.shift_rows(a, shift_a, e)
            assert np.array_equal(e, a.astype(np.float64) - shift_a[:, None])
            np.exp(e, out=e)
            terms = e.copy()
            s, num, s_b = np.empty(3), np.empty(3), np.empty(3)
            k.logit_row_sums(e, a, b, shift_b, s, num)
            assert np.array_equal(e, b.astype(np.float64) - shift_b[:, None]), (v, dtype)
            products = terms * (a.astype(np.float64) - b)
            k.row_sums(terms, s_b)
            for r in range(3):
                exact = math.fsum(terms[r])
                assert abs(s[r] - exact) <= 2.5e-16 * exact, (v, dtype, r)
                assert abs(s_b[r] - exact) <= 2.5e-16 * exact, (v, dtype, r)
                # A signed sum: the bound scales with the sum of magnitudes.
                assert abs(num[r] - math.fsum(products[r])) <= 2.5e-16 * math.fsum(abs(products[r])), (v, r)


def test_the_logits_row_kernels_never_write_outside_their_arrays():
    """Like the statistics kernel, they run without bounds checks: every array they write
    (the shifted rows, the sums) is a view into a larger buffer of signalling NaNs here,
    and every element around it must keep its bits, for rows shorter and longer than the
    lanes."""
    k = kernels.get()
    rng = np.random.default_rng(1)
    pad = 64
    for v in (1, 2, k.LANES - 1, k.LANES, k.LANES + 1, 300):
        rows = 3
        a = rng.standard_normal((rows, v)).astype(np.float32)
        b = rng.standard_normal((rows, v))
        bits = {name: np.full(size + 2 * pad, SENTINEL, dtype=np.uint64)
                for name, size in (("e", rows * v), ("s", rows), ("num", rows), ("s_b", rows))}
        view = {name: x.view(np.float64)[pad:len(x) - pad] for name, x in bits.items()}
        e = view["e"].reshape(rows, v)
        k.shift_rows(a, np.zeros(rows), e)
        k.logit_row_sums(e, a, b, np.zeros(rows), view["s"], view["num"])
        k.row_sums(e, view["s_b"])
        for name, x in bits.items():
            outside = np.concatenate([x[:pad], x[len(x) - pad:]])
            assert (outside == SENTINEL).all(), (v, name)


def test_logits_with_tokens_masked_to_minus_inf():
    """A token masked (-inf) in both runs, or in A only, has p_a = 0 and adds nothing to
    KL(A || B); masked in B only, where A is finite, the KL is infinite (reported as None),
    as is a NaN. The same on both paths, and the masked positions never win top-1."""
    g = _g()
    a = torch.randn(4, 700, generator=g) * 2
    b = a + 1e-2 * torch.randn(4, 700, generator=g)
    both = torch.zeros(4, 700, dtype=torch.bool)
    both[:, ::7] = True
    a_only = torch.zeros_like(both)
    a_only[:, 3::11] = True
    a_only &= ~both
    am, bm = a.masked_fill(both | a_only, float("-inf")), b.masked_fill(both, float("-inf"))
    want = _exact_kl(am, bm)
    b_only = bm.clone()
    b_only[2, 5] = float("-inf")  # finite in A
    nan = bm.clone()
    nan[1, 1] = float("nan")
    for off in (False, True):
        with kernels.disabled() if off else contextlib.nullcontext():
            m = pair_metrics(am, bm, 1e-4, 1e-3, logits=True, maybe_equal=False)
            assert m.kl == pytest.approx(want, rel=1e-12, abs=4e-16), off
            assert m.top1_agree == float((am.argmax(-1) == bm.argmax(-1)).double().mean())
            assert pair_metrics(am, b_only, 1e-4, 1e-3, logits=True).kl is None, off
            assert pair_metrics(am, nan, 1e-4, 1e-3, logits=True).kl is None, off
            masked_in_all_rows = torch.full((2, 5), float("-inf"))
            assert pair_metrics(masked_in_all_rows, masked_in_all_rows.clone(), 0.0, 0.0, logits=True,
                                maybe_equal=False).kl is None, off


def test_identical_pairs_have_the_same_norm_on_both_paths():
    for t in (torch.randn(5000, generator=_g()), torch.randn(300, generator=_g()).bfloat16()):
        fast = pair_metrics(t, t.clone(), 0.0, 0.0)
        with kernels.disabled():
            slow = pair_metrics(t, t.clone(), 0.0, 0.0)
        assert fast.norm_a == pytest.approx(slow.norm_a, rel=1e-12)
        assert (fast.err, fast.worst_flat, fast.cosine) == (0.0, 0, 1.0)


# -- stats mode through the hook ----------------------------------------------------------------
def _stats_run(path, model, x) -> list[dict]:
    with tt.capture(model, path, mode="stats"):
        model(x)
    lines = (path / "rank-0" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_stats_mode_in_the_hook_equals_the_writer_path(tmp_path):
    """With the kernels, stats mode summarises in the hook (no copy); without, the writer
    summarises copies. Same records, statistics and sketches either way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 700), nn.GELU(), nn.Linear(700, 64)).eval()
    x = torch.randn(5, 300)
    with torch.no_grad():
        fast = _stats_run(tmp_path / "fast", model, x)
        with kernels.disabled():
            slow = _stats_run(tmp_path / "slow", model, x)
    assert [(r["module"], r["role"], r["path"]) for r in fast] == [(r["module"], r["role"], r["path"])
                                                                  for r in slow]
    for rf, rs in zip(fast, slow):
        if rf["kind"] != "stats":
            continue
        _assert_stats_close(rf["stats"], rs["stats"], rf["module"])
        assert rf["sketch"].startswith("f64le:")
        assert decode_sketch(rf["sketch"]) == pytest.approx(decode_sketch(rs["sketch"]), rel=1e-12, abs=1e-12)
    summaries = [json.loads((tmp_path / d / "run.json").read_text())["summary"] for d in ("fast", "slow")]
    assert summaries[0]["stats_kernel"].startswith("numba")
    assert summaries[1]["stats_kernel"].startswith("numpy")


class _Clobber(nn.Module):
    """Returns a large tensor, then (its next call site) overwrites it in place."""

    def __init__(self) -> None:
        super().__init__()
        self.make = nn.Identity()
        self.wipe = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.make(x * 3.0)
        y.zero_()  # right after ``make``'s hook returned
        return self.wipe(y)


def test_a_large_tensor_summarised_in_the_hook_is_shared_with_helpers_and_stays_alias_safe(tmp_path):
    """Stats mode reads a large tensor in parts on several threads; the hook waits for
    them, so an in-place change right after it cannot leak into the statistics."""
    from tensortap.capture.helper import SPLIT_MIN_BYTES, StatsHelper, usable_cores

    x = torch.randn(5 * SPLIT_MIN_BYTES // 4 + 999, generator=_g()) * 2 + 0.25
    helper = StatsHelper(3)
    try:
        for sketching in (False, True):
            sk_whole, sk_parts = (CountSketch(), CountSketch()) if sketching else (None, None)
            whole = tensor_stats(x, sk_whole).to_json()
            parts = helper.stats(x, sk_parts).to_json()
            _assert_stats_close(parts, whole, "helper parts vs whole")
            if sketching:
                assert torch.allclose(sk_parts.acc, sk_whole.acc, rtol=1e-12, atol=1e-9)
    finally:
        helper.close()

    model = _Clobber().eval()
    with torch.no_grad(), tt.capture(model, tmp_path / "run", mode="stats") as s:
        model(x)
        helper = s._pipeline._helper
    if usable_cores() > 1:
        assert helper is not None and helper.helpers >= 1  # the split path really ran
    recs = {(r["module"], r["role"]): r for r in
            map(json.loads, (tmp_path / "run" / "rank-0" / "manifest.jsonl").read_text().splitlines())}
    want = tensor_stats(x * 3.0).to_json()
    _assert_stats_close(recs[("make", "output")]["stats"], want, "make output")
    assert recs[("wipe", "input")]["stats"]["zero"] == x.numel()
    assert not [t for t in threading.enumerate() if t.name.startswith("tensortap-stats")]


# -- without numba -------------------------------------------------------------------------------
_CAPTURE = textwrap.dedent("""
    import sys, torch, torch.nn as nn, tensortap as tt
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU()).eval()
    with torch.no_grad(), tt.capture(model, sys.argv[1], mode="stats"):
        model(torch.randn(4, 64))
""")


def _run_capture(tmp_path, name: str, env_extra: dict, fake_numba: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    if fake_numba:
        fake = tmp_path / "fake"
        (fake / "numba").mkdir(parents=True, exist_ok=True)
        (fake / "numba" / "__init__.py").write_text("raise ImportError('numba is broken here')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(fake), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", _CAPTURE, str(tmp_path / name)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_numba_capture_falls_back_and_says_why(tmp_path):
    p = _run_capture(tmp_path, "nonumba", {}, fake_numba=True)
    assert p.returncode == 0, p.stderr[-2000:]
    ok = _run_capture(tmp_path, "numba", {}, fake_numba=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads((tmp_path / "nonumba" / "run.json").read_text())["summary"]
    assert summary["stats_kernel"].startswith("numpy (numba unavailable: ImportError: numba is broken")
    fast = tt.open(tmp_path / "numba").records()
    slow = tt.open(tmp_path / "nonumba").records()
    assert len(fast) == len(slow)
    for rf, rs in zip(fast, slow):
        if rf.stats is not None:
            _assert_stats_close(rf.stats.to_json(), rs.stats.to_json(), rf.module)


def test_kernels_env_off_and_numba_demanded_but_missing(tmp_path):
    p = _run_capture(tmp_path, "off", {kernels.ENV: "off"}, fake_numba=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "off" / "run.json").read_text())["summary"]["stats_kernel"] == \
        f"off ({kernels.ENV}=off)"
    p = _run_capture(tmp_path, "demanded", {kernels.ENV: "numba"}, fake_numba=True)
    assert p.returncode != 0
    assert f"{kernels.ENV}=numba but the kernels did not load" in p.stderr


# -- the manifest form of a sketch -------------------------------------------------------------
def test_sketch_encoding_round_trips_and_rejects_damage():
    values = tuple(float(v) for v in np.random.default_rng(1).standard_normal(SKETCH_DIM) * 1e3)
    text = encode_sketch(values)
    assert decode_sketch(text) == values  # lossless
    assert decode_sketch(list(values)) == values  # the JSON-list form still reads
    for bad in ("f64le:!!!!", "f32:AAAA", "f64le:" + "A" * 11, 5, ["x"],
                encode_sketch([1.0, float("nan")]), [10 ** 400]):
        with pytest.raises(ValueError):
            decode_sketch(bad)


def test_a_process_with_the_kernels_loaded_survives_vllms_module_scan():
    """vLLM's CPU platform scans every module's globals at engine start (see
    ``kernels.compiled._let_vllm_cpu_scan_llvmlite``); with numba imported, that scan used
    to fail. The same walk, as vLLM 0.32 does it, must now pass over every module; the
    real engine starting in-process after the kernels is tests/test_vllm_offline.py."""
    assert kernels.load()
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not namespace:
            continue
        for value in list(namespace.values()):
            if hasattr(value, "__dict__"):
                vars(value).get("kernel")


def test_records_summarised_in_the_hook_are_committed_on_the_timer_without_a_flush(tmp_path):
    """The writer is not woken for each record that has nothing left to compute; its armed
    commit timer must still publish them within flush_interval (the crash-loss window)."""
    from tensortap.capture.pipeline import WriterPipeline
    from tensortap.store.writer import RankWriter

    assert kernels.load()
    pipe = WriterPipeline(RankWriter(tmp_path, 0), flush_interval=0.2, with_sketch=True)
    manifest = tmp_path / "rank-0" / "manifest.jsonl"

    def committed(n: int) -> list[dict]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if manifest.exists() and len(manifest.read_text().splitlines()) >= n:
                break
            time.sleep(0.02)
        return [json.loads(x) for x in manifest.read_text().splitlines()] if manifest.exists() else []

    try:
        for burst in range(2):  # each burst finds the writer asleep with nothing pending
            time.sleep(0.5)
            for i in range(burst * 25, burst * 25 + 25):
                rec = {"step": 0, "module": f"m{i}", "call": 0, "role": "output", "path": "", "seq": i,
                       "kind": "stats", "dtype": "float32", "shape": [300]}
                assert pipe.submit_tensor(rec, torch.randn(300), store=False)
                time.sleep(0.002)
            assert pipe.pending == 0  # summarised in the hook: nothing copied, nothing budgeted
            lines = committed(burst * 25 + 25)
            assert [r["seq"] for r in lines] == list(range(burst * 25 + 25))  # no flush() was called
        assert all(r["sketch"].startswith("f64le:") for r in lines)
    finally:
        pipe.close()
