"""Hostile and damaged runs: manifests, run.json, shards with lying headers, flipped bytes.

Every case starts from a real captured run and damages it the way a crash, a bad disk
or a malicious sender could. Readers must report (never serve) bad data, ``verify``
must name the file and record, commands must answer in one line, and nothing may be
written anywhere.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import tensortap as tt
from reliability_support import (HTML_NAME, assert_one_line_error, cli, make_run, manifest, read_header,
                                 shards, tree, write_shard)
from tensortap.errors import CorruptRecordError
from tensortap.store.reader import Run
from tensortap.store.verify import verify_run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run")


def _originals(run_dir) -> dict[int, torch.Tensor]:
    run = Run(run_dir)
    out = {r.seq: run.load(r).clone() for r in run.records() if r.has_data}
    run.close()
    return out


def _good_line(run_dir) -> dict:
    return json.loads(manifest(run_dir).read_text().splitlines()[0])


# -- manifests --------------------------------------------------------------------------

def _bad_lines(good: dict) -> dict[str, bytes]:
    def line(**changes) -> bytes:
        d = {**good, "seq": 10_000, **changes}
        return json.dumps(d).encode()

    return {
        "torn line in the middle": json.dumps(good).encode()[:37],
        "step is a string": line(step="0"),
        "step is a float": line(step=1.0),
        "call is a bool": line(call=True),
        "negative seq": line(seq=-1),
        "shape is a string": line(shape="3x4"),
        "stats is a list": line(stats=[1, 2, 3]),
        "stats count is text": line(stats={**good["stats"], "nan": "many"}),
        "unknown role": line(role="inputs"),
        "unknown kind": line(kind="weights"),
        "module is a number": line(module=5),
        "module with NUL": line(module="layers.0\u0000evil"),
        "module of 1 MB": line(module="m" * 1_000_000),
        "huge step": line(step=10**30),
        "huge shape": line(shape=[2**70]),
        "400-digit sketch value": b'{"step":0,"module":"m","call":0,"role":"output","path":"","seq":1,'
                                  b'"kind":"stats","sketch":[' + b"9" * 400 + b"]}",
        "5000-digit integer": b'{"step":' + b"9" * 5000 + b"}",
        "shard path traversal": line(shard="../../../../etc/passwd"),
        "absolute shard path": line(shard="/etc/passwd"),
        "not an object": b"[1, 2, 3]",
        "null": b"null",
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "invalid UTF-8": b'{"module": "\xff\xfe"}',
        "binary garbage": bytes(range(1, 256)).replace(b"\n", b""),
    }


def test_hostile_manifest_lines_are_reported_never_served(run_dir, capsys):
    good = _good_line(run_dir)
    originals = _originals(run_dir)
    cases = _bad_lines(good)
    clean = manifest(run_dir).read_bytes()
    manifest(run_dir).write_bytes(clean + b"\n".join(cases.values()) + b"\n")
    first_bad = clean.count(b"\n") + 1

    run = Run(run_dir)
    recs = run.records()
    assert {r.seq for r in recs if r.has_data} == set(originals)    # every good record, nothing else
    assert len(recs) == clean.count(b"\n")
    assert len(run.problems) == len(cases), "\n".join(run.problems)
    for i, name in enumerate(cases):
        assert any(f"manifest.jsonl:{first_bad + i}:" in p for p in run.problems), name
    for rec in recs:
        if rec.has_data:
            assert torch.equal(run.load(rec), originals[rec.seq])

    rc, out, err = cli(capsys, "ls", str(run_dir))
    assert rc == 0 and "Traceback" not in err
    assert out.count("note:") == len(cases)
    rc, out, err = cli(capsys, "ls", str(run_dir), "--json")
    assert rc == 0 and len(json.loads(out)) == len(recs)
    rc, out, err = cli(capsys, "verify", str(run_dir))
    assert rc == 1, out
    for i in range(len(cases)):
        assert f"line {first_bad + i}:" in out
    assert "\x1b" not in out and "Traceback" not in out + err


def test_hostile_names_are_data_not_paths_or_markup(run_dir, capsys, tmp_path):
    """Names with ../, HTML, rich markup and terminal escapes are valid records: they are
    listed as text, escaped, and never reach a file path."""
    good = _good_line(run_dir)
    names = ["../../../../tmp/pwned", HTML_NAME, "[/]closing[bold] tag", "ansi\x1b[2J\x1b]0;title\x07",
             "new\nline"]
    lines = [json.dumps({**good, "seq": 100 + i, "module": n}) for i, n in enumerate(names)]
    with open(manifest(run_dir), "a") as f:
        f.write("\n".join(lines) + "\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = tree(tmp_path)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        run = Run(run_dir)
        assert run.problems == []
        for n in names:
            (rec,) = run.records(module=f"^{__import__('re').escape(n)}$")
            run.load(rec)                               # same data as the line it copied
        rc, out, err = cli(capsys, "ls", str(run_dir))
        assert rc == 0 and "Traceback" not in err
        assert "\x1b" not in out and "\x07" not in out  # escapes shown, not executed
        assert "<script>" in out and "[/]closing[bold] tag" in out
        rc, out, err = cli(capsys, "ls", str(run_dir), "--json")
        assert {x["module"] for x in json.loads(out)} >= set(names)
        for n in names:
            rc, out, err = cli(capsys, "show", str(run_dir), n)
            assert rc == 0, (n, err)
            assert "\x1b" not in out and "Traceback" not in err
        rc, out, err = cli(capsys, "verify", str(run_dir))
        assert rc == 0, out
    finally:
        os.chdir(old)
    assert tree(tmp_path) == before, "a command wrote a file"
    assert not (tmp_path / "pwned").exists() and not os.path.exists("/tmp/pwned")


def test_duplicate_seq_and_missing_shard_and_missing_tensor(run_dir, capsys):
    good = _good_line(run_dir)
    extra = [
        {**good},                                                   # same seq, same key
        {**good, "seq": 500, "shard": "shard-000042.safetensors"},  # shard that does not exist
        {**good, "seq": 501, "tensor": "r999999"},                  # tensor the shard lacks
    ]
    with open(manifest(run_dir), "a") as f:
        f.write("".join(json.dumps(d) + "\n" for d in extra))
    run = Run(run_dir)
    by_seq = {r.seq: r for r in run.records()}
    with pytest.raises(CorruptRecordError, match="missing"):
        run.load(by_seq[500])
    with pytest.raises(CorruptRecordError, match="cannot read tensor"):
        run.load(by_seq[501])
    res = verify_run(run_dir)
    kinds = sorted(p.kind for p in res.errors)
    assert kinds == ["duplicate", "missing-shard", "missing-tensor"], [str(p) for p in res.errors]
    assert any(p.kind == "duplicate" for p in res.warnings)          # same key twice
    rc, out, err = cli(capsys, "verify", str(run_dir))
    assert rc == 1 and "shard-000042.safetensors" in out and "r999999" in out


# -- run.json ---------------------------------------------------------------------------

RUN_JSON_CASES = {
    "future version": json.dumps({"format_version": 99}),
    "version zero": json.dumps({"format_version": 0}),
    "negative version": json.dumps({"format_version": -1}),
    "version as text": json.dumps({"format_version": "1"}),
    "version as bool": json.dumps({"format_version": True}),
    "version as float": json.dumps({"format_version": 1.0}),
    "huge version": json.dumps({"format_version": 10**100}),
    "no version": json.dumps({"status": "complete"}),
    "not an object": "[1, 2]",
    "empty": "",
    "truncated": '{"format_version": 1, "sta',
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "binary": "\udcff\udcfe garbage",
}


@pytest.mark.parametrize("case", sorted(RUN_JSON_CASES))
def test_bad_run_json_is_one_line_exit_2(run_dir, capsys, case):
    text = RUN_JSON_CASES[case]
    (run_dir / "run.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    for argv in (["ls", str(run_dir)], ["show", str(run_dir), "0"], ["verify", str(run_dir)]):
        rc, out, err = cli(capsys, *argv)
        assert_one_line_error(rc, err, f"{case}: {argv[0]}")
        assert "run.json" in err


def test_hostile_run_json_fields_do_not_crash_readers(run_dir, capsys):
    info = json.loads((run_dir / "run.json").read_text())
    info.update(status=["complete"], reason={"html": HTML_NAME}, warnings="[/] not a list")
    (run_dir / "run.json").write_text(json.dumps(info))
    (run_dir / "rank-0" / "status.json").write_text(json.dumps({"status": 1, "warnings": 7}))
    (run_dir / "rank-0" / "tokens.jsonl").write_text("[" * 100_000 + "\n" + '{"step": 0, "request": 5}\n')
    run = Run(run_dir)
    assert run.status == "incomplete" and run.warnings == []
    rc, out, err = cli(capsys, "ls", str(run_dir))
    assert rc == 0 and "Traceback" not in err, err
    rc, out, err = cli(capsys, "show", str(run_dir), "0")
    assert rc == 0 and "Traceback" not in err, err
    rc, out, err = cli(capsys, "verify", str(run_dir))
    assert rc == 0 and "Traceback" not in err, err


# -- shards -----------------------------------------------------------------------------

def _lie(case: str, path) -> None:
    """Damage the shard at ``path`` in one way."""
    header, data = read_header(path)
    names = [k for k in header if k != "__metadata__"]
    a, b = names[0], names[1]
    raw = path.read_bytes()
    if case == "header length 2**63":
        path.write_bytes((2**63).to_bytes(8, "little") + raw[8:])
    elif case == "header length past the end":
        path.write_bytes(len(raw).to_bytes(8, "little") + raw[8:])
    elif case == "header not JSON":
        n = int.from_bytes(raw[:8], "little")
        path.write_bytes(raw[:8] + raw[8:8 + n].replace(b'"', b"'", 3) + raw[8 + n:])
    elif case == "offsets out of bounds":
        header[a]["data_offsets"][1] = len(data) + 4096
        write_shard(path, header, data)
    elif case == "offsets overlap":
        header[b]["data_offsets"] = [0, header[b]["data_offsets"][1] - header[b]["data_offsets"][0]]
        write_shard(path, header, data)
    elif case == "shape larger than the bytes":
        header[a]["shape"] = [s * 100 for s in header[a]["shape"]]
        write_shard(path, header, data)
    elif case == "unknown dtype":
        header[a]["dtype"] = "F128"
        write_shard(path, header, data)
    elif case == "dtype relabelled (same size)":
        header[a]["dtype"] = "I32"
        write_shard(path, header, data)
    elif case == "shape relabelled (same size)":
        header[a]["shape"] = [1, int(torch.tensor(header[a]["shape"]).prod())]
        write_shard(path, header, data)
    elif case == "data swapped between tensors":
        def span(n):
            b0, e0 = header[n]["data_offsets"]
            return data[b0:e0]
        # A partner of the same size but different bytes (a ReLU's input is the
        # Linear's output: swapping those two would change nothing).
        same = [n for n in names if len(span(n)) == len(span(a)) and span(n) != span(a)]
        header[a]["data_offsets"], header[same[0]]["data_offsets"] = \
            header[same[0]]["data_offsets"], header[a]["data_offsets"]
        write_shard(path, header, data)
    elif case == "duplicate tensor name":
        n = int.from_bytes(raw[:8], "little")
        body = raw[8:8 + n].rstrip()
        # A second entry for ``a`` that points at ``b``'s bytes: JSON parsers keep the
        # last one, so a reader that does not notice serves b's numbers as a's.
        dup = json.dumps({a: header[b]})[1:-1].encode()
        new = body[:-1] + b"," + dup + b"}"
        write_shard(path, new, data)
    elif case == "trailing garbage":
        path.write_bytes(raw + b"\x00" * 64)
    elif case == "truncated":
        path.write_bytes(raw[:-50])
    elif case == "empty file":
        path.write_bytes(b"")
    elif case == "flipped data byte":
        buf = bytearray(raw)
        buf[-3] ^= 0x10
        path.write_bytes(bytes(buf))
    elif case == "replaced by a directory":
        path.unlink()
        path.mkdir()
    elif case == "symlink to a copy outside the run":
        outside = path.parent.parent.parent.parent / "outside.safetensors"
        outside.write_bytes(raw)
        path.unlink()
        path.symlink_to(outside)
    else:
        raise AssertionError(case)


SHARD_CASES = [
    "header length 2**63", "header length past the end", "header not JSON", "offsets out of bounds",
    "offsets overlap", "shape larger than the bytes", "unknown dtype", "dtype relabelled (same size)",
    "shape relabelled (same size)", "data swapped between tensors", "duplicate tensor name",
    "trailing garbage", "truncated", "empty file", "flipped data byte", "replaced by a directory",
    "symlink to a copy outside the run",
]


@pytest.mark.parametrize("case", SHARD_CASES)
def test_lying_shard_is_caught_by_verify_and_load(run_dir, capsys, case):
    originals = _originals(run_dir)
    (shard,) = shards(run_dir)
    _lie(case, shard)
    run = Run(run_dir)
    failed = []
    for rec in run.records():
        if not rec.has_data:
            continue
        try:
            t = run.load(rec)
        except CorruptRecordError:
            failed.append(rec)
            continue
        # Whatever load returns is exactly what was captured: never wrong numbers.
        assert torch.equal(t, originals[rec.seq]), f"{case}: {rec.label} loaded wrong data"
    run.close()
    if case != "symlink to a copy outside the run":
        assert failed, f"{case}: every record still loaded"
    res = verify_run(run_dir)
    assert not res.ok, f"{case}: verify found nothing"
    assert all(p.file and shard.name in p.file for p in res.errors), [str(p) for p in res.errors]
    rc, out, err = cli(capsys, "verify", str(run_dir))
    assert rc == 1 and shard.name in out and "Traceback" not in out + err
    if case in ("flipped data byte", "data swapped between tensors", "dtype relabelled (same size)",
                "shape relabelled (same size)"):
        # Structurally valid shards: the error is per record, and names the record.
        assert any(p.record for p in res.errors) and any(
            p.kind in ("checksum", "dtype", "shape") for p in res.errors), [str(p) for p in res.errors]
    if failed:
        # `show` loads the data: a damaged record is one clear line and exit 2.
        bad = failed[0]
        rc, out, err = cli(capsys, "show", str(run_dir), bad.module, "--step", str(bad.step),
                           "--call", str(bad.call), "--role", bad.role, "--path", bad.path)
        assert_one_line_error(rc, err, f"show after {case}")


def test_unreferenced_shard_is_error_in_complete_run_warning_in_incomplete(run_dir):
    (shard,) = shards(run_dir)
    orphan = shard.with_name("shard-000009.safetensors")
    orphan.write_bytes(shard.read_bytes())
    res = verify_run(run_dir)
    assert [p.kind for p in res.errors] == ["unreferenced-shard"]
    status = run_dir / "rank-0" / "status.json"
    status.write_text(json.dumps({"status": "incomplete", "reason": "killed"}))
    res = verify_run(run_dir)
    assert res.ok and [p.kind for p in res.warnings] == ["unreferenced-shard"]
    (shard.parent / ".shard-000010.safetensors.tmp").write_bytes(b"partial")
    (shard.parent / "notes.txt").write_text("hi")
    assert sorted(p.kind for p in verify_run(run_dir).warnings) == ["temp-file", "unknown-file",
                                                                    "unreferenced-shard"]


def test_verify_clean_run_and_json_output(run_dir, capsys):
    rc, out, err = cli(capsys, "verify", str(run_dir), "--json")
    assert rc == 0, out
    res = json.loads(out)
    assert res["ok"] and res["errors"] == 0 and res["records_verified"] == res["records_with_data"] > 0
    assert tt.open(run_dir).status == "complete"


def test_diff_html_report_escapes_hostile_names(tmp_path, capsys):
    """Two runs of a model whose module names are HTML, script and terminal escapes:
    the self-contained HTML report holds them only as escaped text."""
    import torch.nn as nn

    from tensortap.cli.main import COMMAND_MODULES

    assert "tensortap.cli.cmd_diff" in COMMAND_MODULES
    evil = [HTML_NAME.replace(".", "_"), "x\x1b[2J\x1b]0;t\x07y", "[/]z"]

    class M(nn.Module):
        def __init__(self, bias: float) -> None:
            super().__init__()
            for n in evil:
                self.add_module(n, nn.Linear(4, 4))
            self.bias = bias

        def forward(self, x):
            for n in evil:
                x = getattr(self, n)(x)
            return x + self.bias

    for name, bias in (("a", 0.0), ("b", 0.5)):
        torch.manual_seed(0)
        m = M(bias)
        with torch.no_grad(), tt.capture(m, tmp_path / name):
            m(torch.randn(2, 4))
    html = tmp_path / "report.html"
    rc, out, err = cli(capsys, "diff", str(tmp_path / "a"), str(tmp_path / "b"), "--html", str(html))
    assert rc == 1, err                                 # the bias diverges
    page = html.read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "\x1b" not in page and "\x07" not in page
    assert "\x1b" not in out
