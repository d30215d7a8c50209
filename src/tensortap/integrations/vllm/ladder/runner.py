"""Run one rung in a fresh child process and collect its result.

Everything a rung leaves behind lives in ``OUT/<rung>/``: ``spec.json`` (what the child
was asked), ``result.json`` (what it answered), ``engine.log`` (vLLM's output),
``trace/`` (the ``TORCH_TRACE`` folder for tlparse) and ``run/`` (the captured tensors).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tensortap.integrations.vllm.ladder.rungs import Rung

CHILD_MODULE = "tensortap.integrations.vllm.ladder.child"

# Module outputs (and decoder-layer inputs) that the vLLM anchor adapter reads
# (tensortap/integrations/anchors/vllm.py); nothing else is captured.
ANCHOR_MODULES = [
    r"embed_tokens$", r"layers\.\d+$", r"\.input_layernorm$", r"\.post_attention_layernorm$",
    r"\.self_attn$", r"\.qkv_proj$", r"\.o_proj$", r"\.mlp$", r"\.gate_up_proj$", r"\.down_proj$",
    r"(^|\.)norm$", r"^logits_processor$",
]


@dataclass
class ChildJob:
    """What one child process is asked to do."""

    model: str
    prompts: list[str]
    max_new_tokens: int
    dtype: str | None
    max_model_len: int | None
    capture: bool
    capture_tag: str
    extra_compilation: dict[str, Any]
    imports: list[str]
    timeout_s: float
    gpu: bool = False


def child_env(rung: Rung, rung_dir: Path) -> dict[str, str]:
    """The child's environment: the user's, minus tensortap's plugin switches, plus the rung's."""
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORTAP_DIR", "TENSORTAP_CONFIG")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core (and its worker) in the child
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the ladder's few prompts need little
    env["TORCH_TRACE"] = str(rung_dir / "trace")
    env.update(rung.env)
    # The child imports this very tensortap, even when it is not installed (a source tree).
    src = str(Path(__file__).resolve().parents[4])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def write_spec(rung: Rung, job: ChildJob, rung_dir: Path, capture: bool) -> Path:
    spec: dict[str, Any] = {
        "rung": rung.to_dict(job.gpu),
        "model": job.model, "dtype": job.dtype, "prompts": job.prompts,
        "max_new_tokens": job.max_new_tokens, "max_model_len": job.max_model_len,
        "engine_kwargs": rung.engine_kwargs(job.extra_compilation, job.gpu),
        "imports": job.imports,
        "capture": None,
        "result": str(rung_dir / "result.json"),
        "phase_file": str(rung_dir / "phase"),
    }
    if capture:
        # durable=False: these runs are working data for one comparison; fsync of every
        # shard would only slow each rung down (shards are still renamed into place).
        spec["capture"] = {"tag": job.capture_tag, "config": {
            "out": str(rung_dir / "run"), "modules": ANCHOR_MODULES, "overwrite": True, "durable": False}}
    path = rung_dir / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def _stop(proc: subprocess.Popen) -> None:
    """End the child and anything it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _log_tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    interesting = [l for l in text if "Error" in l or "error" in l] or text
    return " | ".join(l.strip()[:300] for l in interesting[-lines:])


def run_child(rung: Rung, job: ChildJob, rung_dir: Path, capture: bool,
              on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``rung`` in a fresh process; return the child's result dict (``ok`` False on failure)."""
    rung_dir.mkdir(parents=True, exist_ok=True)
    result_path = rung_dir / "result.json"
    phase_path = rung_dir / "phase"
    for stale in (result_path, phase_path):
        stale.unlink(missing_ok=True)
    spec = write_spec(rung, job, rung_dir, capture)
    log = rung_dir / "engine.log"
    start = time.perf_counter()
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(spec)], env=child_env(rung, rung_dir),
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        timed_out = False
        try:
            while proc.poll() is None:
                if time.perf_counter() - start > job.timeout_s:
                    timed_out = True
                    _stop(proc)
                    break
                if on_phase is not None and phase_path.exists():
                    try:
                        on_phase(phase_path.read_text())
                    except OSError:
                        pass
                time.sleep(0.5)
        except BaseException:
            _stop(proc)  # Ctrl-C in the parent: never leave an engine behind
            raise
    wall = time.perf_counter() - start
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        why = (f"timed out after {job.timeout_s:.0f} s" if timed_out
               else f"the rung's process exited with status {proc.returncode} without a result")
        tail = _log_tail(log)
        result = {"ok": False, "error": why + (f" ({tail})" if tail else "")}
    result["wall_s"] = wall
    result["log"] = str(log)
    result["timed_out"] = timed_out
    return result
