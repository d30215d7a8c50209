"""Every place tensortap touches vLLM internals, one small function each.

Written against vLLM 0.32 (V1 engine, V1 model runner). When vLLM moves something,
this module is the one to change; the rest of the adapter only calls these functions.
Nothing here imports vLLM at module import time.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def vllm_version() -> str:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # noqa: BLE001 - a version we cannot read is still a run
        return "unknown"


# -- workers and model runners -----------------------------------------------------
# Methods wrapped on single instances (never on their classes), v1/worker/gpu_model_runner.py
# and gpu_worker.py:
RUNNER_STEP_METHOD = "execute_model"  # runs one scheduled batch: its model forward is a step
RUNNER_DUMMY_METHOD = "_dummy_run"  # memory profiling, warm-up, CUDA-graph capture, DP padding
WORKER_SHUTDOWN_METHOD = "shutdown"  # what vLLM calls when it stops the worker
def unwrap_worker(obj: Any) -> Any:
    """The concrete worker (``CPUWorker``, ``Worker``) behind what ``collective_rpc`` hands a
    function: vLLM passes its ``WorkerWrapperBase``, which forwards attributes to ``.worker``."""
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    if isinstance(obj, WorkerWrapperBase):
        return obj.worker
    return obj


def model_runner(worker: Any) -> Any:
    runner = getattr(worker, "model_runner", None)
    if runner is None:
        raise RuntimeError(f"{type(worker).__name__} has no model_runner (not a V1 GPU/CPU worker)")
    return runner


def runner_model(runner: Any) -> nn.Module:
    model = getattr(runner, "model", None)
    if not isinstance(model, nn.Module):
        raise RuntimeError("the model runner has no loaded model yet")
    return model


def worker_config(worker: Any) -> Any:
    return worker.vllm_config


def worker_rank(worker: Any) -> int:
    """The worker's global rank in its engine (TP x PP); names its ``rank-<r>`` folder."""
    return int(getattr(worker, "rank", 0) or 0)


def parallel_layout(worker: Any) -> dict[str, Any]:
    """TP/PP sizes and this worker's place in them, for run.json."""
    pc = worker_config(worker).parallel_config
    tp = int(pc.tensor_parallel_size)
    pp = int(pc.pipeline_parallel_size)
    rank = worker_rank(worker)
    # vLLM numbers ranks TP-fastest within a PP stage (parallel_state.initialize_model_parallel).
    return {
        "rank": rank, "world_size": tp * pp,
        "tp_rank": rank % tp, "tp_size": tp, "pp_rank": rank // tp, "pp_size": pp,
        "dp_size": int(getattr(pc, "data_parallel_size", 1) or 1),
        "ranks": [{"rank": r, "tp_rank": r % tp, "pp_rank": r // tp} for r in range(tp * pp)],
    }


def engine_settings(worker: Any) -> dict[str, Any]:
    """The engine settings that change what a capture sees, for run.json."""
    cfg = worker_config(worker)
    mc, cc, sc, comp = cfg.model_config, cfg.cache_config, cfg.scheduler_config, cfg.compilation_config
    return {
        "model": str(mc.model),
        "dtype": str(mc.dtype).removeprefix("torch."),
        "enforce_eager": bool(mc.enforce_eager),
        "compilation_mode": str(getattr(comp.mode, "name", comp.mode)),
        "cudagraph_mode": str(getattr(comp.cudagraph_mode, "name", comp.cudagraph_mode)),
        "prefix_caching": bool(cc.enable_prefix_caching),
        "block_size": cc.block_size,
        "chunked_prefill": bool(sc.enable_chunked_prefill),
        "max_num_batched_tokens": sc.max_num_batched_tokens,
        "max_num_seqs": sc.max_num_seqs,
        "speculative": cfg.speculative_config is not None,
        "worker": f"{type(worker).__module__}.{type(worker).__qualname__}",
        "device": str(getattr(cfg.device_config, "device", "")),
    }


def prefix_caching_on(worker: Any) -> bool:
    return bool(worker_config(worker).cache_config.enable_prefix_caching)


def eager_problems(worker: Any) -> list[str]:
    """Why hooks would not fire in this engine (empty when it runs eagerly).

    Inside a torch.compile graph or a CUDA-graph replay no Python forward runs, so module
    hooks are silently skipped: such an engine is refused rather than half captured.
    """
    from vllm.config import CompilationMode, CUDAGraphMode

    comp = worker_config(worker).compilation_config
    problems = []
    if comp.mode != CompilationMode.NONE:
        problems.append(f"torch.compile is on (compilation mode {getattr(comp.mode, 'name', comp.mode)})")
    if comp.cudagraph_mode not in (None, CUDAGraphMode.NONE):
        problems.append(f"CUDA graphs are on (cudagraph_mode {getattr(comp.cudagraph_mode, 'name', comp.cudagraph_mode)})")
    return problems


def runner_problems(worker: Any) -> list[str]:
    """Model runners whose batch this adapter cannot read (empty when supported).

    The step gate and token tables use the V1 runner's ``execute_model``, ``_dummy_run``
    and persistent ``input_batch``; Model Runner V2 builds its batch per step.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runner = model_runner(worker)
    if not isinstance(runner, GPUModelRunner):  # CPUModelRunner and XPUModelRunner derive from it
        return [f"model runner {type(runner).__qualname__} is not supported (tensortap reads the "
                "V1 GPUModelRunner family; for Model Runner V2 set VLLM_USE_V2_MODEL_RUNNER=0)"]
    return []


def layout_problems(worker: Any) -> list[str]:
    """Parallel layouts whose ranks tensortap cannot name apart (empty when supported)."""
    pc = worker_config(worker).parallel_config
    if int(getattr(pc, "data_parallel_size", 1) or 1) > 1:
        # Each data-parallel engine numbers its workers from 0: their rank folders would collide.
        return [f"data parallelism (data_parallel_size={pc.data_parallel_size}) is not supported"]
    return []


# -- @support_torch_compile --------------------------------------------------------
def is_compile_decorated(module: nn.Module) -> bool:
    """True for instances of a class decorated with ``@support_torch_compile``.

    The decorator assigns ``cls.__call__``, which bypasses ``nn.Module.__call__`` and so
    every hook registered on the instance (vllm/compilation/decorators.py).
    """
    try:
        from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper
    except ImportError:  # moved: fall back to the attribute the decorator sets
        return hasattr(module, "do_not_compile")
    return isinstance(module, TorchCompileWithNoGuardsWrapper)


def decorated_call_is_plain_forward(module: nn.Module) -> bool:
    """True when the decorated ``__call__`` would just run ``self.forward`` (compilation off)."""
    return bool(getattr(module, "do_not_compile", False))


# -- the batch of one step -----------------------------------------------------------
def scheduled_requests(runner: Any, scheduler_output: Any) -> list[tuple[str, int]]:
    """``(request id, tokens scheduled this step)`` in the row order of the flat batch.

    ``_prepare_inputs`` lays requests out in ``input_batch`` order, each contributing its
    scheduled tokens as consecutive rows (gpu_model_runner.py, ``req_indices``).
    """
    batch = runner.input_batch
    ids = list(batch.req_ids[: batch.num_reqs])
    counts = scheduler_output.num_scheduled_tokens
    return [(rid, int(counts[rid])) for rid in ids]


def uses_spec_decode(runner: Any) -> bool:
    return getattr(runner, "speculative_config", None) is not None


def offline_prompt_number(request_id: str) -> int | None:
    """``LLM.generate`` numbers requests ``"0"``, ``"1"``… from ``LLM.request_counter``; the
    engine appends ``-<8 random chars>`` (input_processor.assign_request_id)."""
    head = request_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


# -- the LLM object (user process) ---------------------------------------------------
def llm_request_counter(llm: Any) -> int | None:
    counter = getattr(llm, "request_counter", None)
    value = getattr(counter, "counter", None)
    return int(value) if isinstance(value, int) else None


def llm_reset_prefix_cache(llm: Any) -> None:
    reset = getattr(llm, "reset_prefix_cache", None)
    if callable(reset):
        reset()


def llm_shutdown(llm: Any) -> None:
    """Stop the engine's processes now rather than at garbage collection."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()


def is_serialization_refusal(e: BaseException) -> bool:
    """vLLM's engine-core channel refuses to pickle functions unless allowed (serial_utils.py)."""
    return "VLLM_ALLOW_INSECURE_SERIALIZATION" in str(e)


# -- the plugin's two entry points -----------------------------------------------------
ENGINE_CONFIG_METHOD = "create_engine_config"  # EngineArgs -> VllmConfig, before any engine process
WORKER_LOAD_METHOD = "load_model"  # the worker loads its model; the runner exists from here on


def engine_args_class() -> type:
    """The class whose ``create_engine_config`` turns CLI/LLM arguments into a VllmConfig."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs


def worker_class_with_load_model() -> type:
    """The V1 worker base whose ``load_model`` the GPU, CPU and XPU workers inherit."""
    from vllm.v1.worker.gpu_worker import Worker

    return Worker


SHUTDOWN_GRACE_S = 10


def make_args_capture_friendly(args: Any) -> dict[str, Any]:
    """Switch an ``EngineArgs`` to what capture needs, before the engine is built.

    Returns what was changed or kept, for messages. ``enforce_eager`` makes VllmConfig
    set compilation mode NONE and cudagraph mode NONE (config/vllm.py). Prefix caching
    is only defaulted off: an explicit ``--enable-prefix-caching`` is kept (and warned about).
    """
    changed: dict[str, Any] = {}
    if getattr(args, "shutdown_timeout", None) == 0:
        # 0 means "abort": `vllm serve` kills the engine core and its workers at once on
        # Ctrl-C (v1/utils.py shutdown), before a worker can write its last records and
        # status. Workers get VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS (5 s) + 4 s to exit.
        args.shutdown_timeout = SHUTDOWN_GRACE_S
        changed["shutdown_timeout"] = SHUTDOWN_GRACE_S
    if not args.enforce_eager:
        args.enforce_eager = True
        changed["enforce_eager"] = True
    if args.enable_prefix_caching is None:
        args.enable_prefix_caching = False
        changed["enable_prefix_caching"] = False
    elif args.enable_prefix_caching:
        changed["prefix_caching_forced_on"] = True
    return changed
