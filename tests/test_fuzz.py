"""Property-based fuzzing (hypothesis) of everything that parses outside input.

Examples per run (``TENSORTAP_FUZZ_SCALE=10`` multiplies them for a longer hunt):
config parsing 300 dicts + 300 texts + 200 environments, plus a grid of every config key
with 42 edge values; manifest records 400 round trips + 400 mutations, plus a grid of
every field with the same edge values; whole runs from random manifests 150; key/path
encoding 300 structures + 300 key pairs; shard headers 400 mutations (checked against
the real safetensors library) + 300 random byte strings; damaged shards end to end 60;
tensor statistics 300. No example database is written and deadlines are off (file I/O).
What fuzzing found is listed in docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tensortap.capture.config import CaptureConfig, build_config, config_from_env, valid_keys
from tensortap.capture.flatten import _MAX_DEPTH, encode_key, flatten, flatten_inputs, json_safe
from tensortap.errors import ConfigError, CorruptRecordError
from tensortap.store import format as fmt
from tensortap.store.reader import Run, record_from_json
from tensortap.store.record import Record, TensorStats
from tensortap.store.shardcheck import check_shard_bytes
from tensortap.store.stats import tensor_stats
from tensortap.store.verify import verify_run

SCALE = float(os.environ.get("TENSORTAP_FUZZ_SCALE", "1"))


def fuzz(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- shared strategies --------------------------------------------------------------------

# Besides random values: the edges parsers trip on (integers too big for a float,
# non-finite floats, regexes that overflow or nest deeply, paths that cannot resolve).
tricky = st.sampled_from(["inf", "-inf", "nan", "1e999", "a{4294967296}", "(" * 400, "~no_such_user/x",
                          "x" * 5000, "\x00", "[/]", "../../etc/passwd", "<script>"])
huge_ints = st.integers(300, 4000).map(lambda k: 10**k) | st.integers(-2**70, 2**70)
json_scalars = (st.none() | st.booleans() | st.integers() | huge_ints | st.floats() | st.text(max_size=20)
                | tricky)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
names = st.text(max_size=40).filter(lambda s: "\x00" not in s)
finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**62 - 1)


# -- config parsing -----------------------------------------------------------------------

# Flat values are drawn often, so a key meets an edge value (inf, 1e999...) often enough.
any_values = json_scalars | st.lists(json_scalars, max_size=3) | json_values
# Mostly known keys: one unknown key rejects the whole dict before anything else is tried.
config_dicts = (st.dictionaries(st.sampled_from(valid_keys()), any_values, max_size=4)
                | st.dictionaries(st.text(max_size=12), any_values, max_size=3))


@fuzz(300)
@given(config_dicts)
def test_build_config_from_dict_raises_only_config_error(d):
    try:
        cfg = build_config(d)
    except ConfigError as e:
        assert "\n" not in str(e).strip() or "regex" in str(e)
        return
    assert isinstance(cfg, CaptureConfig)
    # What is accepted can be written to run.json and read back to the same config.
    dumped = json.loads(json.dumps(cfg.model_dump(mode="json"), allow_nan=False))
    assert build_config(dumped) == cfg
    assert 0 < cfg.flush_interval < math.inf


EDGES = [math.inf, -math.inf, math.nan, 1e308, -0.0, 0, -1, 2**63, 10**400, True, "", "inf", "1e999",
         "a{4294967296}", "(" * 400, "~no_such_user/x", "x" * 5000, "\x00", {}, [], None]


def test_build_config_every_key_with_edge_values():
    """A grid next to the random search: every key alone with every edge value, bare and in a
    list (random dicts rarely pair e.g. flush_interval with inf)."""
    for key in valid_keys():
        for value in EDGES + [[e] for e in EDGES]:
            test_build_config_from_dict_raises_only_config_error.hypothesis.inner_test({key: value})


def test_record_every_field_with_edge_values():
    base = Record(step=0, module="m", call=0, role="output", path="", seq=0, kind="tensor",
                  dtype="float32", shape=(2,), stats=TensorStats(0, 1, 0.5, 0.5, 1, 1, 0, 0, 1, 2),
                  shard=fmt.shard_name(1), tensor="r0", checksum="crc32:00000000", sketch=(1.0,)).to_json()
    for key in list(base) + ["value", "extra", "new"]:
        for value in EDGES + [[e] for e in EDGES]:
            d = json.loads(json.dumps({**base, key: value}))
            try:
                record_from_json(d, 0)
            except ValueError:
                pass


@fuzz(300)
@given(st.text(max_size=300) | tricky | config_dicts.map(json.dumps))
def test_build_config_from_text_raises_only_config_error(text):
    try:
        assert isinstance(build_config(text), CaptureConfig)
    except ConfigError:
        pass


@fuzz(200)
@given(st.dictionaries(st.sampled_from(["TENSORTAP_CONFIG", "TENSORTAP_DIR", "OTHER"]),
                       st.text(max_size=60).filter(lambda s: "\x00" not in s), max_size=3))
def test_config_from_env_raises_only_config_error(env):
    try:
        cfg = config_from_env(env)
    except ConfigError:
        return
    assert cfg is None or cfg.out


# -- manifest records ---------------------------------------------------------------------

stats_strategy = st.builds(
    TensorStats, min=st.none() | finite, max=st.none() | finite, mean=st.none() | finite,
    std=st.none() | finite, absmax=st.none() | finite, l2=st.none() | finite,
    nan=counts, inf=counts, zero=counts, numel=counts)


@st.composite
def valid_records(draw) -> Record:
    kind = draw(st.sampled_from(["tensor", "stats", "value"]))
    shard = draw(st.integers(1, 999_999).map(fmt.shard_name)) if kind == "tensor" else None
    return Record(
        step=draw(counts), module=draw(names), call=draw(counts), role=draw(st.sampled_from(["input", "output"])),
        path=draw(names), seq=draw(counts), kind=kind, rank=0,
        dtype=draw(st.none() | st.sampled_from(["float32", "bfloat16", "int64", "bool"])),
        shape=draw(st.none() | st.lists(counts, max_size=6).map(tuple)),
        device=draw(st.none() | st.sampled_from(["cpu", "cuda:0"])),
        stats=draw(st.none() | stats_strategy), shard=shard,
        tensor=draw(names) if shard else None, checksum=draw(names) if shard else None,
        value=draw(json_values.filter(lambda v: v is not None and _json_ok(v))) if kind == "value" else None,
        sketch=draw(st.none() | st.lists(finite, max_size=8).map(tuple)),
        extra=draw(st.dictionaries(st.text(max_size=8), json_values.filter(_json_ok), max_size=3)),
    )


def _json_ok(v) -> bool:
    try:
        return json.loads(json.dumps(v, allow_nan=False)) == v
    except ValueError:
        return False


@fuzz(400)
@given(valid_records())
def test_record_json_roundtrip(rec):
    line = json.dumps(rec.to_json(), allow_nan=False)
    assert record_from_json(json.loads(line), 0) == rec


@fuzz(400)
@given(valid_records(), st.lists(st.tuples(st.sampled_from(
    ["step", "module", "call", "role", "path", "seq", "kind", "dtype", "shape", "device", "stats",
     "shard", "tensor", "checksum", "value", "sketch", "extra", "new"]), any_values), max_size=4),
    st.lists(st.sampled_from(["step", "module", "role", "kind", "seq", "stats"]), max_size=2))
def test_mutated_record_is_record_or_value_error(rec, changes, deletions):
    d = rec.to_json()
    for key, value in changes:
        d[key] = value
    for key in deletions:
        d.pop(key, None)
    try:
        out = record_from_json(json.loads(json.dumps(d)), 0)
    except ValueError:
        return
    # Accepted records hold what the reader promises: bounded ints, safe shard names.
    assert 0 <= out.step < 2**62 and 0 <= out.seq < 2**62 and out.role in ("input", "output")
    assert out.shard is None or fmt.is_valid_shard_name(out.shard)
    assert "\x00" not in out.module + out.path


manifest_lines = st.one_of(
    valid_records().map(lambda r: json.dumps(r.to_json()).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    valid_records().flatmap(lambda r: st.integers(0, 200).map(
        lambda k: json.dumps(r.to_json()).encode()[:k])),
)


@fuzz(150)
@given(st.lists(manifest_lines, max_size=12), st.booleans())
def test_run_on_random_manifest_never_raises(lines, trailing_newline):
    lines = [ln.replace(b"\n", b" ") for ln in lines]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "run.json").write_text(json.dumps({"format_version": 1, "status": "complete"}))
        (root / "rank-0" / "data").mkdir(parents=True)
        data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
        (root / "rank-0" / "manifest.jsonl").write_bytes(data)
        run = Run(root)
        recs = run.records()
        complete = data.split(b"\n")[:-1]
        assert len(recs) + len(run.problems) == sum(1 for ln in complete if ln.strip())
        assert bool(run.notes) == bool(data.split(b"\n")[-1].strip())
        run.records(module="x", step=0, role="output")
        for rec in recs:
            if rec.has_data:
                with pytest.raises(CorruptRecordError):   # no shard exists: never served
                    run.load(rec)
        res = verify_run(root)
        assert len(res.errors) >= len(run.problems)


# -- key/path encoding --------------------------------------------------------------------

_tensor_ids = st.integers(0, 10**6).map(lambda i: torch.full((2,), float(i)))
leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | _tensor_ids
str_keyed = st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.tuples(c, c)
                         | st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=16)


def _count_tensors(obj, depth: int = 0) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if depth >= _MAX_DEPTH:
        return 0
    if isinstance(obj, dict):
        return sum(_count_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v, depth + 1) for v in obj)
    return 0


@fuzz(300)
@given(str_keyed)
def test_flatten_paths_are_unique_and_storable(obj):
    items = list(flatten(obj))
    paths = [p for p, _ in items]
    assert len(paths) == len(set(paths)), f"two leaves share a path: {paths}"
    tensors = [v for _, v in items if isinstance(v, torch.Tensor)]
    assert len({id(t) for t in tensors}) == len(tensors) == _count_tensors(obj)
    for seq, (path, value) in enumerate(items):
        rec = {"step": 0, "module": "m", "call": 0, "role": "output", "path": path, "seq": seq}
        rec.update({"kind": "stats"} if isinstance(value, torch.Tensor) else {"kind": "value", "value": value})
        line = json.dumps(rec, separators=(",", ":"), allow_nan=False)   # exactly as the writer does
        back = record_from_json(json.loads(line), 0)                   # and the reader accepts it
        assert back.path == path


@fuzz(300)
@given(st.text(max_size=180), st.text(max_size=180))
def test_encode_key_is_injective_and_clean(a, b):
    ea, eb = encode_key(a), encode_key(b)
    assume(a != b)
    assert ea != eb
    for e in (ea, eb):
        assert not re.search(r"(?<!\\)(?:\\\\)*\.", e), "unescaped dot"
        assert not any(ord(c) < 0x20 for c in e)


def test_flatten_inputs_kwargs_and_truncation():
    got = dict(flatten_inputs((torch.ones(1),), {"a.b": 1, "a": {"b": 2}}))
    assert got["0"].shape == (1,) and got["a\\.b"] == 1 and got["a.b"] == 2
    many = dict(flatten(list(range(5000))))
    assert len(many) == 4097 and "5000 items" in many["…"]["truncated"]
    assert json_safe(10**30) == str(10**30) and json_safe(float("nan")) == "nan"


# -- shard headers ------------------------------------------------------------------------

def _base_shard() -> bytes:
    g = torch.Generator().manual_seed(0)
    return safetensors.torch.save({"r0": torch.randn(3, 4, generator=g), "r1": torch.arange(5),
                                   "r2": torch.zeros(0, 2), "r3": torch.ones(2, dtype=torch.bfloat16)})


BASE = _base_shard()


def _safetensors_view(data: bytes):
    """What the real safetensors library makes of ``data``: {name: (dtype code, shape)} or None."""
    try:
        loaded = safetensors.torch.load(data)
    except Exception:  # noqa: BLE001 - any refusal counts as "not loadable"
        return None
    return {k: tuple(v.shape) for k, v in loaded.items()}


header_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "I64", "BF16", "BOOL", "F64", "U8"]) | st.text(max_size=4),
    "shape": st.lists(st.integers(0, 6), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(0, 200), min_size=2, max_size=2) | json_values,
})


@st.composite
def mutated_shards(draw) -> bytes:
    how = draw(st.sampled_from(["flip", "header", "length", "cut"]))
    data = bytearray(BASE)
    if how == "flip":
        for pos, bit in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)),
                                      min_size=1, max_size=4)):
            data[pos] ^= 1 << bit
        return bytes(data)
    if how == "header":
        header = draw(st.dictionaries(st.text(max_size=6), header_entries, max_size=4))
        body = json.dumps(header).encode()
        return struct.pack("<Q", len(body)) + body + draw(st.binary(max_size=200))
    if how == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + bytes(data[8:])
    return bytes(data[: draw(st.integers(0, len(data)))])


@fuzz(400)
@given(mutated_shards())
def test_shard_check_agrees_with_safetensors(data):
    chk = check_shard_bytes(data, len(data))
    real = _safetensors_view(data)
    if chk.ok:
        # Everything our check accepts, the library loads, with the shapes we saw.
        assert real is not None
        assert real == {n: t.shape for n, t in chk.tensors.items()}
    if real is not None and not chk.ok:
        # Stricter than the library is allowed only for things we list on purpose.
        assert all("twice" in p or "__metadata__" in p for p in chk.problems), chk.problems


@fuzz(300)
@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_shard_check_never_raises_on_random_bytes(data, size):
    check_shard_bytes(data, max(size, len(data)))
    check_shard_bytes(data, len(data))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from reliability_support import make_run

    root = make_run(tmp_path_factory.mktemp("fuzz") / "run")
    run = Run(root)
    originals = {r.seq: run.load(r).clone() for r in run.records() if r.has_data}
    run.close()
    (shard,) = sorted((root / "rank-0" / "data").glob("shard-*"))
    return root, shard.read_bytes(), originals


@fuzz(60)
@given(st.data())
def test_damaged_shard_never_serves_wrong_numbers(base_run, data):
    root, raw, originals = base_run
    buf = bytearray(raw)
    for pos, bit in data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 7)),
                                       min_size=1, max_size=3)):
        buf[pos] ^= 1 << bit
    with tempfile.TemporaryDirectory() as d:
        import shutil

        copy = Path(d) / "run"
        shutil.copytree(root, copy)
        (shard,) = sorted((copy / "rank-0" / "data").glob("shard-*"))
        shard.write_bytes(bytes(buf))
        run = Run(copy)
        failed = 0
        for rec in run.records():
            if rec.has_data:
                try:
                    t = run.load(rec)
                except CorruptRecordError:
                    failed += 1
                    continue
                assert torch.equal(t, originals[rec.seq]), rec.label
        run.close()
        res = verify_run(copy)
        if failed:
            assert not res.ok, "a record fails to load but verify passed"
        elif not res.ok:
            # Every record loads, yet verify objects: only to the shard's structure.
            assert all(p.kind == "shard" for p in res.errors), [str(p) for p in res.errors]


# -- statistics ---------------------------------------------------------------------------

@fuzz(300)
@given(st.lists(st.floats(width=64), min_size=0, max_size=40), st.sampled_from([torch.float64, torch.float32,
                                                                                 torch.bfloat16, torch.float16]))
def test_tensor_stats_are_strict_json(values, dtype):
    t = torch.tensor(values, dtype=torch.float64).to(dtype)
    s = tensor_stats(t)
    json.dumps(s.to_json(), allow_nan=False)            # the manifest is strict JSON
    x = t.double()
    assert s.nan == int(torch.isnan(x).sum()) and s.inf == int(torch.isinf(x).sum()) and s.numel == len(values)
    if s.min is not None:
        assert s.min <= s.max
