"""The layer arrows point one way (README "Layout", ../shared/DESIGN.md): parsed imports, not
conventions, and importing the vLLM plugin module loads nothing heavy.

``KNOWN`` lists the upward imports the redesign (issue #18) has not removed yet; an import
that is not in it fails, and so does an entry that no longer exists (so the list only
shrinks).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tensortap"

LAYERS = ("cli", "report", "localize", "compare", "integrations", "capture", "store")
"""Top to bottom: a layer imports only layers after it."""
SIDE = ("errors", "htmlpage", "kernels", "version", "lazy")
"""Beside the layers, used by several of them, importing none of them."""

KNOWN = {
    # DiffReport.to_html() / __rich__: the documented conveniences render through report.
    ("compare/result.py", "report"),
    # The ladder's engine-neutral comparison still lives under integrations/vllm.
    ("integrations/vllm/ladder/compare.py", "compare"),
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tensortap":
        return None
    return parts[1] if len(parts) > 1 else "<root>"


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tensortap":  # `from tensortap import kernels` names a submodule
                out += [(f"tensortap.{a.name}" if a.name in LAYERS + SIDE else "tensortap", node.lineno)
                        for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


def violations(src: Path) -> list[tuple[str, str, int, str]]:
    """``(file, imported layer, line, why)`` for every import against the arrows."""
    found = []
    for f in sorted(src.rglob("*.py")):
        rel = f.relative_to(src).as_posix()
        me = rel.split("/")[0].removesuffix(".py") if "/" in rel else rel.removesuffix(".py")
        if me not in LAYERS + SIDE:
            continue  # the root package, api.py, testing/: above every layer
        for name, line in _imports(ast.parse(f.read_text(), filename=str(f))):
            other = _layer(name)
            if other is None or other == me:
                continue
            if other == "<root>":
                found.append((rel, other, line, "imports the package root (load order, cycles)"))
            elif me in SIDE and other in LAYERS:
                found.append((rel, other, line, f"side module {me} imports layer {other}"))
            elif me in LAYERS and other in LAYERS and LAYERS.index(other) < LAYERS.index(me):
                found.append((rel, other, line, f"{me} imports {other}, a layer above it"))
    return found


def test_no_upward_imports():
    bad = [v for v in violations(SRC) if (v[0], v[1]) not in KNOWN]
    assert not bad, "\n".join(f"{f}:{line}: {why}" for f, _, line, why in bad)


def test_known_exceptions_still_exist():
    found = {(v[0], v[1]) for v in violations(SRC)}
    stale = KNOWN - found
    assert not stale, f"remove these from KNOWN, they are fixed: {sorted(stale)}"


def test_a_planted_upward_import_is_caught(tmp_path):
    """Negative control: the checker sees an upward import and a root import."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "bad.py").write_text(textwrap.dedent("""
        from tensortap.compare.api import diff
        import tensortap
    """))
    (tmp_path / "kernels.py").write_text("from tensortap.capture import session\n")
    got = {(f, other) for f, other, _, _ in violations(tmp_path)}
    assert got == {("store/bad.py", "compare"), ("store/bad.py", "<root>"), ("kernels.py", "capture")}


def _fresh_python(code: str, env: dict | None = None) -> str:
    """stdout of ``code`` run in a new interpreter (which has imported nothing yet)."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_importing_the_vllm_plugin_loads_nothing_heavy():
    """vLLM imports the plugin module in every process: it must cost (almost) nothing."""
    code = ("import sys, threading; import tensortap.integrations.vllm.plugin as p; p.register(); "
            "heavy = [m for m in ('torch', 'numpy', 'pydantic', 'safetensors', 'tensortap.capture.session', "
            "'tensortap.capture.pipeline', 'tensortap.store', 'tensortap.compare') if m in sys.modules]; "
            "print(heavy, threading.active_count())")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TENSORTAP_")}
    assert _fresh_python(code, env) == "[] 1"


def test_import_tensortap_is_lazy_but_complete():
    code = ("import sys, tensortap as tt; before = 'torch' in sys.modules; "
            "names = [callable(tt.capture), callable(tt.open), callable(tt.diff), callable(tt.localize), "
            "callable(tt.bisect_compile)]; print(before, all(names), tt.__version__)")
    before, ok, version = _fresh_python(code).split()
    assert before == "False" and ok == "True" and version.count(".") == 2


def test_cli_help_imports_neither_torch_nor_the_pipeline():
    """`tensortap --help` and every command's --help only build the parser (issue #22)."""
    code = ("import sys; from tensortap.cli.main import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'numpy', 'pydantic', 'tensortap.capture.session', "
            "'tensortap.store.reader') if m in sys.modules]; print(heavy)")
    assert _fresh_python(code) == "[]"
    for cmd in ([], ["diff"], ["capture"], ["ls"]):
        h = subprocess.run([sys.executable, "-X", "importtime", "-m", "tensortap.cli.main", *cmd, "--help"],
                           capture_output=True, text=True, timeout=120)
        assert h.returncode == 0 and "usage:" in h.stdout
        assert not re.search(r"\|\s+torch$", h.stderr, re.M), cmd
