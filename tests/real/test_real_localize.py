"""localize on real weights: the right culprit in fp32 and bf16, never a container whose
children all pass, padding rows left out, a vLLM reference refused with one line."""

from __future__ import annotations

import pytest
import torch

import tensortap as tt
from tensortap.capture.config import build_config
from tensortap.errors import TensortapError
from tensortap.integrations.hf import capture_generate, load_model
from tensortap.testing.smollm2 import smollm2
from real_support import PROMPT_SETS, capture

pytestmark = [pytest.mark.real]

CULPRIT = "model.layers.14.mlp.down_proj"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers fp32, two prompts of different lengths (so one row is padding), step 0."""
    model_dir = smollm2()
    model, tok = load_model(model_dir)
    out = tmp_path_factory.mktemp("loc") / "ref"
    cfg = build_config(None, out=str(out), steps=[0], overwrite=True)
    capture_generate(model_dir, cfg, PROMPT_SETS["capital"][0], 1, model=model, tokenizer=tok)
    return model_dir, out


def _scaled(model, name: str, factor: float):
    with torch.no_grad():
        dict(model.named_parameters())[name + ".weight"].mul_(factor)
    return model


def _containers_ok(rep) -> None:
    failed = {r.module for r in rep.rows if r.local_status == "diverged"}
    for m in failed:
        children = [c for c in failed if c != m and (m == "" or c.startswith(m + "."))]
        kids = [r for r in rep.rows if r.module != m and (m == "" or r.module.startswith(m + "."))]
        assert not kids or children, f"container {m!r} blamed while all its children pass"


def test_fp32_culprit(reference, tmp_path):
    model_dir, ref = reference
    model, _ = load_model(model_dir)
    rep = tt.localize(_scaled(model, CULPRIT, 1.01), ref, out=tmp_path / "w")
    assert rep.culprit is not None and rep.culprit["module"] == CULPRIT, rep.culprit
    _containers_ok(rep)


def test_bf16_clean_blames_nothing_and_bf16_bug_is_found(reference, tmp_path):
    model_dir, ref = reference
    model, _ = load_model(model_dir, "bfloat16")
    clean = tt.localize(model, ref, out=tmp_path / "clean")
    assert clean.culprit is None, clean.culprit
    _containers_ok(clean)
    # The padding row is left out: 'model' local error is what diff reports (~2e-2), not 0.1.
    root = [r for r in clean.rows if r.module == "model" and r.path == "last_hidden_state"]
    assert root and root[0].local < 0.05
    bug = tt.localize(_scaled(model, CULPRIT, 1.25), ref, out=tmp_path / "bug")
    assert bug.culprit is not None and bug.culprit["module"] == CULPRIT, bug.culprit
    _containers_ok(bug)


@pytest.mark.vllm
def test_vllm_reference_is_refused_with_one_line(tmp_path):
    model_dir = smollm2()
    run = capture(model_dir, tmp_path / "v", "vllm", "colors", "float32", "--steps", "0")
    model, _ = load_model(model_dir)
    with pytest.raises(TensortapError, match="localize needs a reference captured with transformers"):
        tt.localize(model, run, out=tmp_path / "w")
