"""Tolerances: dtype-aware defaults, --atol/--rtol, the noise-floor rule, and the metrics themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensortap as tt
from tensortap.compare.metrics import pair_metrics
from tensortap.compare.tolerance import (
    DTYPE_DEFAULTS, TolerancePolicy, floor_bound, floor_multiplier, parse_override,
)
from tensortap.errors import ConfigError
from diff_helpers import PLANTED_MODULE, runs  # noqa: F401  (fixture)


# -- fp32 reference vs a bf16 rerun of the same model ------------------------------------------

def test_bf16_rerun_fails_fp32_tolerance(runs):
    atol, rtol = DTYPE_DEFAULTS["float32"]
    rep = tt.diff(runs.a, runs.bf16, atol=atol, rtol=rtol)
    assert rep.verdict == "diverged"
    fd = rep.first_divergence
    # The first floating tensor bf16 rounds: the embedding output.
    assert (fd.module, fd.step, fd.role) == ("model.embed_tokens", 0, "output")
    assert fd.origin == "introduced"


def test_bf16_rerun_passes_with_bf16_floor_and_default(runs):
    rep = tt.diff(runs.a, runs.bf16, floor=runs.bf16_rerun)
    assert rep.verdict == "agree", rep.summary_line
    floats = [r for r in rep.rows if r.kind == "tensor" and r.dtype_b == "bfloat16"]
    assert floats and all(r.floor_rel_l2 is not None and r.floor_k == 3.0 for r in floats)
    # Default tolerance of a float32-vs-bfloat16 pair is the coarser dtype's.
    rep = tt.diff(runs.a, runs.bf16)
    assert rep.verdict == "agree", rep.summary_line
    assert {r.tol_source for r in rep.rows if r.dtype_b == "bfloat16"} == {"bfloat16 default"}
    assert max(r.rel_l2 for r in rep.rows if r.dtype_b == "bfloat16") > DTYPE_DEFAULTS["float32"][1] * 100


def test_floor_still_finds_a_real_bug_in_bf16(runs):
    rep = tt.diff(runs.a, runs.bug_bf16, floor=runs.bf16_rerun)
    assert rep.verdict == "diverged"
    fd = rep.first_divergence
    assert (fd.module, fd.step, fd.role) == (PLANTED_MODULE, 0, "output")
    row = rep.rows[fd.row]
    assert row.rel_l2 > row.floor_k * row.floor_rel_l2


# -- the rule and its pieces ----------------------------------------------------------------------

def test_policy_precedence_and_exact_integers():
    pol = TolerancePolicy()
    t = pol.for_pair("x", "float32", "bfloat16")
    assert (t.atol, t.rtol) == DTYPE_DEFAULTS["bfloat16"] and t.source == "bfloat16 default"
    assert pol.for_pair("x", "int64", "int64").exact
    assert pol.for_pair("x", "bool", "bool").exact
    pol = TolerancePolicy(rtol=1e-3, overrides=["lm_head:rtol=0.5,atol=0"])
    t = pol.for_pair("model.layers.0", "float32", "float32")
    assert t.rtol == 1e-3 and t.atol == DTYPE_DEFAULTS["float32"][0] and t.source == "--atol/--rtol"
    t = pol.for_pair("lm_head", "float32", "float32")
    assert (t.rtol, t.atol) == (0.5, 0.0) and "override" in t.source
    unknown = TolerancePolicy().for_pair("x", "float8_e8m0fnu", "float8_e8m0fnu")
    assert unknown.rtol > DTYPE_DEFAULTS["bfloat16"][1]


@pytest.mark.parametrize("spec", ["lm_head", "lm_head:rtol", "lm_head:rtol=x", "(:rtol=1", "a:tol=1",
                                  "a:rtol=-1", "a:rtol=inf"])
def test_bad_override_specs(spec):
    with pytest.raises(ConfigError):
        parse_override(spec)


def test_floor_rule_matches_dynamo_same():
    tol = TolerancePolicy().for_pair("x", "float32", "float32")
    bound, k = floor_bound(2.0, tol, "float32", 10_000, 100.0)
    assert k == 2.0 and bound == pytest.approx(2 * 2.0 + tol.bound(10_000, 100.0) / 10)
    assert floor_multiplier("bfloat16", 10_000) == 3.0
    assert floor_multiplier("float32", 999) == 3.0


def _reference(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> dict:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = a64 - b64
    return {
        "max_abs": float(np.abs(d).max()), "mean_abs": float(np.abs(d).mean()),
        "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(a64)),
        "cosine": float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64))),
        "rel_diff": float(1 - 2 * (a64 @ b64) / (a64 @ a64 + b64 @ b64)),
        "sqnr_db": float(20 * np.log10(np.linalg.norm(a64) / np.linalg.norm(d))),
        "fail": float(np.mean(np.abs(d) > atol + rtol * np.abs(a64))),
        "worst": int(np.argmax(np.abs(d))),
    }


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 3000), seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3),
       chunk=st.sampled_from([7, 64, 1 << 18]))
def test_metrics_match_a_direct_float64_computation(n, seed, scale, chunk):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * scale).astype(np.float32)
    b = (a + rng.standard_normal(n).astype(np.float32) * np.float32(scale * 1e-3)).astype(np.float32)
    b[0] = a[0] + scale  # one clear worst element
    m = pair_metrics(torch.from_numpy(a), torch.from_numpy(b), 1e-6, 1e-5, chunk=chunk)
    ref = _reference(a, b, 1e-6, 1e-5)
    for key in ("max_abs", "mean_abs", "rel_l2", "cosine", "sqnr_db"):
        assert getattr(m, key) == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert m.rel_diff == pytest.approx(ref["rel_diff"], rel=1e-6, abs=1e-12)
    assert m.fail_frac == pytest.approx(ref["fail"])
    assert m.worst_flat == ref["worst"] == 0


def test_nan_and_inf_disagreement_is_counted_not_propagated():
    a = torch.tensor([1.0, float("nan"), float("inf"), 4.0, float("-inf"), 6.0])
    b = torch.tensor([1.0, float("nan"), float("inf"), float("nan"), float("inf"), 6.0])
    m = pair_metrics(a, b, 1e-6, 1e-5, chunk=4)
    assert m.nan_mismatch == 1 and m.inf_mismatch == 1
    assert math.isfinite(m.rel_l2) and m.rel_l2 == 0.0  # finite elements agree


def test_low_precision_and_integer_inputs():
    a = torch.randn(1000)
    m = pair_metrics(a, a.to(torch.bfloat16), 0, 0)
    assert 1e-4 < m.rel_l2 < 1e-2
    m = pair_metrics(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4]), 0, 0)
    assert m.max_abs == 1 and m.fail_frac == pytest.approx(1 / 3)
