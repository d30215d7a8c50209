"""Loading ``.pt`` files without running code hidden in them (the pickle policy).

A ``.pt`` file is a pickle, and unpickling can call any function the file names
(``os.system`` included). Importers of other tools' dumps therefore go through
``load_pt``: it uses ``torch.load(weights_only=True)``, whose restricted unpickler
accepts only tensors, plain containers and numbers, and turns a refusal into a
``TensortapError`` that names the opt-in (``--trust-pickle``). Nothing in tensortap
unpickles any other way.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from tensortap.errors import TensortapError, one_line

TRUST_FLAG = "--trust-pickle"


def _refusal_detail(e: BaseException) -> str:
    # torch wraps the restricted unpickler's own error (e.g. "Trying to load unsupported
    # GLOBAL posix.system ...") in a long generic message; the inner one says what was refused.
    inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else None
    text = str(inner or e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return one_line(lines[0] if lines else type(e).__name__, 300)


def load_pt(path: str | Path, trust_pickle: bool = False, map_location: str = "cpu") -> Any:
    """Load a ``.pt`` file; only tensors and plain data unless ``trust_pickle`` is True.

    Raises TensortapError (one line, naming ``--trust-pickle``) when the file needs
    code execution to load, and TensortapError when it is missing or not a torch file.
    ``trust_pickle=True`` is the user's explicit decision to run the file's pickle.
    """
    p = Path(path)
    if not p.is_file():
        raise TensortapError(f"{p}: no such file")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols on stderr; errors below say what matters.
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise TensortapError(f"{p}: not a readable torch file ({_refusal_detail(e)})") from None
        raise TensortapError(
            f"{p}: refused to unpickle ({_refusal_detail(e)}); torch.load(weights_only=True) "
            f"accepts only tensors and plain data, and loading this file could run code from it. "
            f"If you trust where it came from, pass {TRUST_FLAG}") from None
    except (EOFError, OSError, RuntimeError, ValueError) as e:
        # EOFError: an empty file; RuntimeError: a broken zip archive.
        raise TensortapError(f"{p}: not a readable torch file "
                             f"({type(e).__name__}: {one_line(str(e), 200)})") from None
