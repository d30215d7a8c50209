"""Writing self-contained HTML pages: the diff report's and the vLLM ladder's.

Layer-neutral (like ``errors``), so ``report`` and ``integrations`` can both use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tensortap.errors import TensortapError


def json_for_script(data: Any) -> str:
    """``data`` as JSON safe to embed in a ``<script>`` block.

    A name or prompt holding ``</script>`` or ``<!--`` would end or confuse the block, and
    U+2028/U+2029 end a line in older JavaScript parsers; all are escaped (the JSON means
    the same).
    """
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def write_page(path: str | Path, text: str) -> Path:
    """Write a page to ``path`` (creating its folder) and return it; one-line error if not."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise TensortapError(f"{p}: cannot write the HTML report ({e.strerror or e})") from None
    return p
