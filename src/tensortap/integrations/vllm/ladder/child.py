"""One rung in a fresh process: build the engine, generate greedily, write a JSON result.

usage: python -m tensortap.integrations.vllm.ladder.child SPEC.json

The parent (runner.py) writes SPEC.json and reads the result file it names. A fresh
process per rung is the point: Dynamo's caches, Inductor's in-memory state and vLLM's
compiled graphs must not leak from one configuration into the next.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by the
parent), so its worker is here too: taps (taps.py) are attached right after the worker
loads the model and before vLLM's first forward, which is when Dynamo traces it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# The tag vLLM hashes into its compile-cache key (VllmConfig.additional_config): graphs
# traced with taps are stored apart from clean ones and never serve a normal vLLM run.
CACHE_TAG_KEY = "tensortap_taps"


def _phase(spec: dict[str, Any], text: str) -> None:
    """Tell the parent what this rung is doing (shown in its progress line)."""
    path = spec.get("phase_file")
    if path:
        try:
            Path(path).write_text(text)
        except OSError:
            pass


def _resolve_passes(comp: dict[str, Any]) -> None:
    """Make ``inductor_passes`` qualified names in nested modules loadable by vLLM.

    vLLM resolves ``"pkg.mod.fn"`` with ``__import__("pkg.mod").__dict__["fn"]``, which
    looks in ``pkg`` (the top package), not ``pkg.mod``. Import the module here and give
    vLLM a flat alias of it instead.
    """
    passes = comp.get("inductor_passes")
    if not isinstance(passes, dict):
        return
    for name, qualname in list(passes.items()):
        if not isinstance(qualname, str) or qualname.count(".") < 2:
            continue
        module_name, fn = qualname.rsplit(".", 1)
        module = importlib.import_module(module_name)
        alias = "_tensortap_pass_" + module_name.replace(".", "_")
        sys.modules[alias] = module
        passes[name] = f"{alias}.{fn}"


class _Engine:
    """What the worker reveals once the model is loaded (and the capture on it, if any)."""

    def __init__(self) -> None:
        self.worker: Any = None
        self.capture: Any = None
        self.capture_error: str | None = None


def _hook_model_load(spec: dict[str, Any], engine: _Engine) -> None:
    """Wrap the worker's ``load_model`` (class level: this process runs one engine only)."""
    from tensortap.integrations.vllm import compat

    cls = compat.worker_class_with_load_model()
    original = getattr(cls, compat.WORKER_LOAD_METHOD)
    capture = spec.get("capture")

    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        engine.worker = self
        graphs = _cudagraph_mode(self)
        if capture and graphs != "NONE":
            # A CUDA-graph replay launches recorded kernels without running any Python, so
            # the tap op would fire while graphs are captured and never again.
            engine.capture_error = (f"CUDA graphs are on (cudagraph_mode {graphs}): replays run no Python, "
                                    "so taps cannot fire")
        elif capture:
            try:
                from tensortap.capture.config import build_config
                from tensortap.integrations.vllm.ladder.taps import attach_taps

                config = build_config(capture["config"], source="ladder capture config")
                extra = {"ladder_rung": spec["rung"]["name"], "prompts": spec["prompts"],
                         "max_new_tokens": spec["max_new_tokens"], "model_dir": spec["model"]}
                engine.capture = attach_taps(self, config, extra)
            except Exception as e:  # noqa: BLE001 - the rung still runs, uncaptured
                engine.capture_error = f"{type(e).__name__}: {e}"
        return result

    setattr(cls, compat.WORKER_LOAD_METHOD, load_model)


def _cudagraph_mode(worker: Any) -> str:
    mode = worker.vllm_config.compilation_config.cudagraph_mode
    return "NONE" if mode is None else str(getattr(mode, "name", mode))


def _engine_info(worker: Any) -> dict[str, Any]:
    """The settings the engine really ran with (vLLM rewrites some per platform)."""
    from tensortap.integrations.vllm import compat

    if worker is None:
        return {}
    cfg = compat.worker_config(worker)
    comp = cfg.compilation_config
    info = compat.engine_settings(worker)
    info["compilation_backend"] = str(comp.backend)
    info["vllm"] = compat.vllm_version()
    return info


def _compile_info(engine: dict[str, Any]) -> dict[str, Any]:
    """What the compiler did in this process: traced, compiled, loaded from the cache."""
    from vllm.compilation.counter import compilation_counter

    counters = {k: int(v) for k, v in vars(compilation_counter).items() if isinstance(v, int)}
    try:
        from torch._dynamo.utils import counters as dynamo_counters

        graphs = int(dynamo_counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - informative only
        graphs = -1
    loaded = counters.get("num_aot_artifacts_loaded", 0) + counters.get("num_compiled_artifacts_loaded", 0)
    saved = counters.get("num_aot_artifacts_saved", 0) + counters.get("num_compiled_artifacts_saved", 0)
    compiled = engine.get("compilation_mode", "NONE") != "NONE" and not engine.get("enforce_eager")
    if os.environ.get("VLLM_DISABLE_COMPILE_CACHE") == "1":
        cache = "off"
    elif loaded:
        cache = "hit"
    elif saved:
        cache = "miss"
    else:
        cache = "unused"
    switches = []
    if compiled:
        switches.append("compile")
        if engine.get("compilation_backend") == "inductor":
            switches.append("inductor")
    if loaded:
        switches.append("cache")
    if engine.get("cudagraph_mode", "NONE") not in ("NONE", "None"):
        switches.append("cudagraph")
    return {"cache": cache, "dynamo_graphs": graphs, "switches": switches, "counters": counters}


def _generate(llm: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams

    # Greedy, a fixed length (ignore_eos) and the chosen token's logprob (logprobs=0),
    # so every rung's outputs compare position by position.
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"], logprobs=0,
                            ignore_eos=True, seed=0)
    outputs = llm.generate(spec["prompts"], params, use_tqdm=False)
    tokens, logprobs, texts = [], [], []
    for out in outputs:
        comp = out.outputs[0]
        ids = [int(t) for t in comp.token_ids]
        tokens.append(ids)
        texts.append(comp.text)
        row = []
        for pos, tid in enumerate(ids):
            entry = comp.logprobs[pos].get(tid) if comp.logprobs and pos < len(comp.logprobs) else None
            row.append(float(entry.logprob) if entry is not None else None)
        logprobs.append(row)
    return {"token_ids": tokens, "logprobs": logprobs, "texts": texts}


def _capture_summary(engine: _Engine, spec: dict[str, Any]) -> dict[str, Any] | None:
    if not spec.get("capture"):
        return None
    if engine.capture is None:
        return {"run": None, "refused": engine.capture_error or "the worker never loaded a model"}
    cap = engine.capture
    summary = cap.stop()
    session = cap.session
    return {
        "run": str(spec["capture"]["config"]["out"]), "refused": None,
        "status": summary.get("status"), "reason": summary.get("reason"),
        "records": summary.get("records"), "steps": summary.get("steps"),
        "planned": [p.name for p in session.planned], "never_fired": summary.get("never_fired", []),
        "fired": dict(session.fired), "warnings": summary.get("warnings", []),
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the rung's engine, generate, and describe what happened."""
    for key in ("TENSORTAP_DIR", "TENSORTAP_CONFIG"):
        os.environ.pop(key, None)  # the plugin would force enforce_eager on every rung
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    for module in spec.get("imports") or []:
        importlib.import_module(module)
    kwargs = dict(spec["engine_kwargs"])
    if "compilation_config" in kwargs:
        _resolve_passes(kwargs["compilation_config"])
    engine = _Engine()
    _hook_model_load(spec, engine)
    from vllm import LLM

    from tensortap.integrations.vllm import compat

    llm_kwargs: dict[str, Any] = {"model": spec["model"], "dtype": spec.get("dtype") or "auto", "seed": 0,
                                  "enable_prefix_caching": False, **kwargs}
    if spec.get("max_model_len"):
        llm_kwargs["max_model_len"] = spec["max_model_len"]
    if spec.get("capture"):
        llm_kwargs["additional_config"] = {CACHE_TAG_KEY: spec["capture"]["tag"]}
    _phase(spec, "starting engine (load, compile, warm-up)")
    t0 = time.perf_counter()
    llm = LLM(**llm_kwargs)
    t1 = time.perf_counter()
    try:
        _phase(spec, "generating")
        result = _generate(llm, spec)
        t2 = time.perf_counter()
        _phase(spec, "finishing capture")
        result["capture"] = _capture_summary(engine, spec)
        result["engine"] = _engine_info(engine.worker)
        result["compile"] = _compile_info(result["engine"])
        result["timings"] = {"engine_start_s": t1 - t0, "generate_s": t2 - t1}
    finally:
        compat.llm_shutdown(llm)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tensortap.integrations.vllm.ladder.child SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    out: dict[str, Any] = {"rung": spec["rung"]["name"], "ok": False, "pid": os.getpid()}
    start = time.perf_counter()
    try:
        out.update(run(spec))
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001 - report every failure to the parent
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        out["traceback"] = traceback.format_exc()[-6000:]
    out["wall_s"] = time.perf_counter() - start
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    tmp.replace(spec["result"])
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
