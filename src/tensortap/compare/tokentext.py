"""The text of a token named in a report: ``(request, position)`` -> its id and text.

Token ids come from the run's token table; their text from the model folder's
``tokenizer.json`` (the ``tokenizers`` library, when installed), found through
``run.json``'s engine ``model_dir``. Any of these may be missing: the text is then
``None`` and the report shows the id alone.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tensortap.store.reader import Run


@functools.lru_cache(maxsize=8)
def _tokenizer(model_dir: str) -> Any:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - a missing or foreign tokenizer only costs the text
        return None


def token_id(run: Run, step: int, rank: int, key: tuple[int, int]) -> int | None:
    """The id of token ``key = (request, position)`` in ``run``'s token table at ``step``."""
    table = run.tokens(step, rank)
    if not isinstance(table, dict):
        return None
    req, pos, ids = table.get("request"), table.get("position"), table.get("token_ids")
    if not (isinstance(req, list) and isinstance(pos, list) and isinstance(ids, list)):
        return None
    for r, p, t in zip(req, pos, ids):
        if (r, p) == tuple(key) and isinstance(t, int):
            return t
    return None


def token_info(run: Run, step: int, rank: int, key: tuple[int, int]) -> dict[str, Any] | None:
    """``{"request", "position", "token_id", "text"}`` for a token of ``run``, or None."""
    tid = token_id(run, step, rank, key)
    if tid is None:
        return None
    eng = run.info.get("engine") if isinstance(run.info, dict) else None
    model_dir = eng.get("model_dir") if isinstance(eng, dict) else None
    tok = _tokenizer(str(model_dir)) if model_dir else None
    text = None
    if tok is not None:
        try:
            text = tok.decode([tid], skip_special_tokens=False)
        except Exception:  # noqa: BLE001
            text = None
    return {"request": int(key[0]), "position": int(key[1]), "token_id": tid, "text": text}
