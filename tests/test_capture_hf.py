"""Capture of a real transformers model during generate: steps, values, token tables."""

from __future__ import annotations

import torch

import tensortap as tt
from tensortap.capture.config import build_config
from tensortap.integrations.hf import TokenTableHook, capture_generate

PROMPTS = ["Paris is the capital of", "Hi"]


def test_generate_per_step_values_equal_independent_hook(tmp_path, hf_model):
    model, tok = hf_model
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    reference: list[torch.Tensor] = []
    handle = model.model.layers[1].mlp.register_forward_hook(
        lambda m, a, o: reference.append(o.detach().clone()))
    try:
        with tt.capture(model, tmp_path / "r", modules=[r"layers\.1\.", "lm_head"], steps=[0, 1]):
            model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    finally:
        handle.remove()
    run = tt.open(tmp_path / "r")
    assert run.status == "complete"
    assert run.steps() == [0, 1]
    outs = run.records(module=r"layers\.1\.mlp$", role="output")
    assert [r.step for r in outs] == [0, 1]
    b, t = batch["input_ids"].shape
    assert outs[0].shape == (b, t, 128) and outs[1].shape == (b, 1, 128)
    for rec, ref in zip(outs, reference[:2]):
        assert torch.equal(run.load(rec), ref)
    assert len(reference) == 3                  # step 2 ran but was not recorded
    assert run.records(module="lm_head") and not run.records(module=r"layers\.0\.")
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_token_table_matches_prompts(tmp_path, tiny_model_dir, hf_model):
    model, tok = hf_model
    res = capture_generate(tiny_model_dir, build_config(out=str(tmp_path / "r"), modules=["lm_head"]),
                           prompts=PROMPTS, max_new_tokens=3, model=model, tokenizer=tok)
    run = tt.open(res["run"])
    assert run.info["engine"]["name"] == "hf"
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    t0 = run.tokens(0)
    b, t = t0["batch_shape"]
    assert b == 2 and t == max(len(i) for i in ids)
    for req, prompt_ids in enumerate(ids):
        rows = [k for k in range(b * t) if t0["request"][k] == req]
        assert [t0["token_ids"][k] for k in rows] == prompt_ids
        assert [t0["position"][k] for k in rows] == list(range(len(prompt_ids)))
    pads = [k for k in range(b * t) if t0["request"][k] == -1]
    assert len(pads) == t - min(len(i) for i in ids)
    # decode steps: one row per request at the next position, holding the generated token
    for step in (1, 2):
        ts = run.tokens(step)
        assert ts["batch_shape"] == [2, 1] and ts["request"] == [0, 1]
        assert ts["position"] == [len(ids[0]) + step - 1, len(ids[1]) + step - 1]
        assert ts["token_ids"] == [res["token_ids"][0][step - 1], res["token_ids"][1][step - 1]]


def test_token_hook_respects_step_filter(tmp_path, hf_model):
    model, tok = hf_model
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with tt.capture(model, tmp_path / "r", modules=["lm_head"], steps=[1]) as session:
        hook = TokenTableHook(session).attach(model)
        model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        hook.detach()
    run = tt.open(tmp_path / "r")
    assert run.tokens(0) is None and run.tokens(1) is not None and run.tokens(2) is None
