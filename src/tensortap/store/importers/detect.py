"""Which layout a path holds, and one opener for all of them: ``open_any``.

Detection looks only at names (no file is unpickled to decide): ``run.json`` (a
tensortap run), ``step_N/`` (vLLM intermediate logging), ``TP*_PP*_Rank*_pid*/`` (vLLM /
SGLang pass dump), ``key=value___….pt`` (SGLang dumper), ``*_debug_tree_*.json``
(transformers debugger); each also one folder level down where the tool nests its
output (``<uuid>/``, ``<exp_name>/``).
"""

from __future__ import annotations

from pathlib import Path

from tensortap.errors import RunFormatError
from tensortap.store import format as fmt
from tensortap.store.importers import hf_debugger, pass_dump, sglang_dumper, vllm_il
from tensortap.store.importers.base import ImportedRun
from tensortap.store.importers.names import FORMAT_NAMES
from tensortap.store.reader import Run

IMPORTERS: dict[str, type[ImportedRun]] = {
    "vllm-il": vllm_il.VllmIntermediateRun,
    "pass-dump": pass_dump.PassDumpRun,
    "sglang-dumper": sglang_dumper.SglangDumperRun,
    "hf-debugger": hf_debugger.HfDebuggerRun,
}
FORMATS = ("native", *IMPORTERS)
"""Names accepted by ``--format`` / ``format=``."""
if FORMATS != FORMAT_NAMES:  # names.py serves the CLI without importing the readers
    raise ImportError(f"store/importers/names.py is out of date: {FORMAT_NAMES} != {FORMATS}")


def detect_format(path: str | Path) -> str:
    """The format name of ``path``; RunFormatError listing what was looked for if none fits."""
    p = Path(path)
    if not p.exists():
        raise RunFormatError(f"{p}: no such file or directory")
    if p.is_dir() and (p / fmt.RUN_JSON).exists():
        return "native"
    if hf_debugger.tree_files(p):
        return "hf-debugger"
    if p.is_dir():
        if pass_dump.rank_dirs(p) or any(pass_dump.rank_dirs(p / n) for n in ("target", "draft")):
            return "pass-dump"
        if vllm_il.find_root(p) is not None:
            return "vllm-il"
        if sglang_dumper.find_root(p) is not None:
            return "sglang-dumper"
    raise RunFormatError(
        f"{p}: not a tensortap run (no {fmt.RUN_JSON}) and no known dump layout; looked for "
        f"step_N/ (vLLM intermediate logging), TP*_PP*_Rank*_pid*/Pass*.pt (vLLM/SGLang pass dump), "
        f"step=…___name=….pt (SGLang dumper), <Class>_debug_tree_*.json (transformers debugger); "
        f"pass --format to force one of: {', '.join(FORMATS)}")


def open_any(path: str | Path, format: str | None = None, trust_pickle: bool = False) -> Run:  # noqa: A002
    """Open a tensortap run or another tool's dump as a ``Run`` (auto-detected unless ``format``).

    ``trust_pickle=True`` lets ``.pt`` files run the code their pickle names: only for
    dumps from a trusted source; by default only tensors and plain data are loaded.
    """
    if isinstance(path, Run):
        return path
    name = format or detect_format(path)
    if name == "native":
        return Run(path)
    cls = IMPORTERS.get(name)
    if cls is None:
        raise RunFormatError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}")
    return cls(path, trust_pickle=trust_pickle)
