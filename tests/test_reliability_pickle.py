"""The pickle policy: a ``.pt`` file that would run code is refused, and the code never runs.

The malicious files are real: their pickle calls ``os.system`` to create a marker
file. The last test proves it (with the explicit opt-in the marker appears), so the
refusal tests cannot pass merely because the payload was harmless.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from reliability_support import assert_one_line_error, cli
from tensortap.errors import TensortapError
from tensortap.store.safe_torch_load import TRUST_FLAG, load_pt


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    files = {}
    files["torch.save zip"] = tmp_path / "evil.pt"
    torch.save({"x": torch.ones(2), "payload": _Payload(marker)}, files["torch.save zip"])
    files["legacy torch.save"] = tmp_path / "legacy.pt"
    torch.save({"payload": _Payload(marker)}, files["legacy torch.save"], _use_new_zipfile_serialization=False)
    for proto in (2, 4):
        p = tmp_path / f"raw{proto}.pt"
        p.write_bytes(pickle.dumps(_Payload(marker), protocol=proto))
        files[f"raw pickle protocol {proto}"] = p
    return marker, files


def test_malicious_pickles_are_refused_and_not_executed(evil):
    marker, files = evil
    for what, path in files.items():
        with pytest.raises(TensortapError) as e:
            load_pt(path)
        msg = str(e.value)
        assert TRUST_FLAG in msg and str(path) in msg, (what, msg)
        assert "\n" not in msg, (what, msg)
        assert not marker.exists(), f"{what}: the pickle ran code"


def test_plain_tensors_load_without_trust(tmp_path):
    p = tmp_path / "ok.pt"
    data = {"a": torch.arange(6).reshape(2, 3), "b": [torch.ones(1), 3, "x"], "c": (1.5, None)}
    torch.save(data, p)
    got = load_pt(p)
    assert torch.equal(got["a"], data["a"]) and got["b"][1:] == [3, "x"] and got["c"] == (1.5, None)


def test_missing_empty_and_garbage_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    for name in ("missing.pt", "empty.pt", "junk.pt"):
        with pytest.raises(TensortapError) as e:
            load_pt(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_cli_refuses_a_malicious_dump(evil, tmp_path, capsys):
    """End to end through an importer: an SGLang-dumper-style folder whose file holds
    the payload. ``ls`` lists it as a problem naming --trust-pickle; the marker never appears."""
    marker, files = evil
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "step=0___rank=0___dump_index=1___name=hidden.pt").write_bytes(files["torch.save zip"].read_bytes())
    rc, out, err = cli(capsys, "ls", str(dump))
    # Listed as a problem naming the flag; the dump stays listable (issue 19).
    assert rc == 0 and TRUST_FLAG in out + err and "Traceback" not in err
    assert not marker.exists()


def test_trust_pickle_is_an_explicit_opt_in_that_really_unpickles(evil):
    marker, files = evil
    load_pt(files["torch.save zip"], trust_pickle=True)
    assert marker.exists(), "the payload is real: trusting the file ran it"
