"""Readers for other tools' tensor dumps, each presented as a ``Run`` (imports no engine).

- ``vllm_il``: vLLM intermediate tensor logging (``step_N/<module>/inputs_0_cuda_0.pt``)
- ``pass_dump``: vLLM debug tensor dump and SGLang's hook dump (``TP0_PP0_Rank0_pid1/Pass00000.pt``)
- ``sglang_dumper``: SGLang ``dumper.py`` (``step=0___rank=0___…___name=x.pt``)
- ``hf_debugger``: transformers ``model_addition_debugger_context`` (``<Class>_debug_tree_*.json``)

``open_any`` detects the layout; ``convert_run`` writes any of them as a native run.
See docs/importers.md for the mapping of each layout onto records.
"""

from tensortap.lazy import lazy_getattr

__all__ = ["ImportedRun", "FORMATS", "convert_run", "detect_format", "open_any"]

# Loaded on first use: the CLI builds its parser from names.py without importing readers.
__getattr__ = lazy_getattr(__name__, {
    "ImportedRun": "tensortap.store.importers.base",
    "convert_run": "tensortap.store.importers.convert",
    "FORMATS": "tensortap.store.importers.detect",
    "detect_format": "tensortap.store.importers.detect",
    "open_any": "tensortap.store.importers.detect",
})
