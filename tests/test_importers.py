"""Reading other tools' dumps: vLLM intermediate logging, vLLM/SGLang pass dumps, SGLang
dumper, transformers' debugger (the real one). Each dump is made from the same forward
as a tensortap capture and must hold the same tensors under the same keys; ls, show and
convert work on it; a hostile pickle is refused and never executed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap.capture.config import build_config
from tensortap.capture.session import CaptureSession
from tensortap.cli.main import main as cli
from tensortap.errors import TensortapError
from tensortap.store.importers import ImportedRun, detect_format
from tensortap.store.reader import Run

sys.path.insert(0, str(Path(__file__).parent))
from dump_writers import (  # noqa: E402
    PassDumper, SglangDumper, ToyForCausalLM, VllmIntermediateLogger, toy_engine_steps,
)

PROMPT = "Paris is the capital of"
NEW_TOKENS = 3


def generate(model, tok):
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=tok.pad_token_id)


def compare_to_capture(dump: Run, cap: Run) -> tuple[int, list]:
    """Every dump record with a twin in the capture must be equal to it (kind, value, tensor).

    Returns (records compared, keys the capture lacks). Equality is exact: the dump and
    the capture saw the same forward on CPU. Records the tool chose not to save
    (``extra.skipped``, e.g. over vLLM's max_tensor_size) are not compared.
    """
    twins = {r.key: r for r in cap.records()}
    compared, lacking = 0, []
    for rec in dump.records():
        other = twins.get(rec.key)
        if other is None:
            lacking.append(rec.key)
            continue
        if "skipped" in rec.extra:
            assert rec.kind == "stats" and rec.shape == other.shape
            continue
        assert rec.kind == other.kind, (rec.key, rec.kind, other.kind)
        if rec.kind == "value":
            assert rec.value == other.value, (rec.key, rec.value, other.value)
        elif rec.kind == "tensor":
            assert torch.equal(dump.load(rec), cap.load(other)), rec.key
            assert rec.stats == other.stats, rec.key
        compared += 1
    return compared, lacking


# -- building the dumps once ----------------------------------------------------------------

@pytest.fixture(scope="module")
def dumps(tmp_path_factory, hf_model):
    """One dump per format plus the tensortap captures of the same forwards."""
    from transformers import model_addition_debugger_context

    root = tmp_path_factory.mktemp("dumps")
    model, tok = hf_model
    out: dict[str, Path] = {}

    # transformers debugger (real): one forward, tensors in safetensors files.
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    try:
        with model_addition_debugger_context(model, debug_path=str(root / "hf"), do_prune_layers=False,
                                             use_repr=False):
            model(input_ids=ids)
    finally:
        torch.set_printoptions(profile="default", sci_mode=None)  # the debugger sets them globally
    out["hf-debugger"] = root / "hf"
    # The same forward under tensortap, labelled as transformers like `tensortap capture` does.
    with torch.no_grad(), CaptureSession(model, build_config(out=str(root / "cap-forward")),
                                         engine={"name": "hf"}):
        model(input_ids=ids)
    out["cap-forward"] = root / "cap-forward"

    # vLLM intermediate logging and the SGLang dumper: a 3-step greedy generate.
    with VllmIntermediateLogger(model, root / "vllm_intermediates", log_step_ids=[]) as il:
        generate(model, tok)
    out["vllm-il"] = il.run_dir.parent  # the output dir holding one <uuid> run
    out["sglang-dumper"] = _sglang_dump(model, tok, root / "sglang")
    with tt.capture(model, root / "cap-generate"):
        generate(model, tok)
    out["cap-generate"] = root / "cap-generate"

    # A vLLM-style pass dump of a flat-token engine loop over two requests.
    torch.manual_seed(0)
    toy = ToyForCausalLM().eval()
    with PassDumper(toy, root / "passdump"):
        toy_engine_steps(toy, [[1, 2, 3, 4, 5], [7, 8, 9]], 3)
    out["pass-dump"] = root / "passdump"
    with tt.capture(toy, root / "cap-toy"):
        toy_engine_steps(toy, [[1, 2, 3, 4, 5], [7, 8, 9]], 3)
    out["cap-toy"] = root / "cap-toy"
    out["toy"] = toy  # type: ignore[assignment]
    return out


def _sglang_dump(model, tok, base: Path) -> Path:
    """SGLang dumper in non-intrusive ``all`` mode, plus the core fields and a manual dump."""
    d = SglangDumper(base)
    d.register_non_intrusive(model)

    def root_pre(mod, args, kwargs):
        pos = kwargs.get("position_ids")
        pos = pos if pos is not None else kwargs["cache_position"].unsqueeze(0)
        d.dump("positions", pos)
        d.dump("seq_lens", torch.tensor([int(pos[0, -1]) + 1]))
        d.dump("rids", ["req-a"])

    hooks = [model.register_forward_pre_hook(root_pre, with_kwargs=True),
             model.register_forward_hook(lambda *a: d.step()),
             model.model.layers[1].mlp.register_forward_hook(
                 lambda m, a, o: d.dump("mlp_out", o, kind="manual", dims="t h"))]
    try:
        generate(model, tok)
    finally:
        for h in hooks:
            h.remove()
        d.remove()
    return d.dir


# -- each format against a tensortap capture of the same forward -----------------------------

def test_detection_picks_each_layout(dumps):
    for name in ("hf-debugger", "vllm-il", "sglang-dumper", "pass-dump"):
        assert detect_format(dumps[name]) == name
        run = tt.open(dumps[name])
        assert isinstance(run, ImportedRun) and isinstance(run, Run)
        assert run.info["imported"]["format"] == name
    assert detect_format(dumps["cap-forward"]) == "native"


def test_hf_debugger_real_dump_equals_capture(dumps, hf_model):
    run = tt.open(dumps["hf-debugger"])
    assert run.info["engine"]["name"] == "transformers-model-debugger"
    compared, lacking = compare_to_capture(run, tt.open(dumps["cap-forward"]))
    assert lacking == [] and compared == len(run.records())
    # Every safetensors file the debugger wrote is one tensor record (the root's logits
    # included, though the debugger prunes them from its JSON).
    files = list(Path(dumps["hf-debugger"]).glob("*.safetensors"))
    assert len(run.records(kind="tensor")) == len(files)
    logits = run.records(module="^$", role="output", path="^logits$")
    assert len(logits) == 1 and logits[0].extra.get("path_from_file_name")
    # Leaf modules have outputs; parents (decoder layers) only inputs, as the tool records.
    assert run.records(module=r"^model\.layers\.0\.mlp\.down_proj$", role="output")
    assert not run.records(module=r"^model\.layers\.0$", role="output")
    assert run.records(module=r"^model\.layers\.0$", role="input")
    model, tok = hf_model
    ids = tok(PROMPT)["input_ids"]
    assert run.tokens(0) == {"step": 0, "layout": "batch", "batch_shape": [1, len(ids)],
                             "request": [0] * len(ids), "position": list(range(len(ids))),
                             "token_ids": ids}


def test_vllm_intermediate_logging_equals_capture(dumps):
    run = tt.open(dumps["vllm-il"])
    assert run.path.parent == dumps["vllm-il"]  # resolved to the <uuid> folder
    assert run.steps() == list(range(NEW_TOKENS))
    compared, lacking = compare_to_capture(run, tt.open(dumps["cap-generate"]))
    assert lacking == [] and compared == len(run.records())
    # One record per saved .pt file, plus the non-tensor positional inputs the JSON lists.
    pts = list(run.path.rglob("*.pt"))
    assert len(run.records(kind="tensor")) == len(pts)
    # Model outputs that are dicts (BaseModelOutputWithPast) map to paths by key.
    assert run.records(module="^model$", role="output", path="^last_hidden_state$", step=2)


def test_sglang_dumper_equals_capture(dumps):
    run = tt.open(dumps["sglang-dumper"])
    assert run.steps() == list(range(NEW_TOKENS))
    compared, lacking = compare_to_capture(run, tt.open(dumps["cap-generate"]))
    files = list(Path(dumps["sglang-dumper"]).glob("*.pt"))
    assert compared > 150
    # Records the capture lacks are exactly the dumper's own names and one-tensor tuples
    # (attention returns (out, None); the dumper stores the tensor alone, path "").
    expected_extra = {"input_ids", "positions", "seq_lens", "rids", "mlp_out[kind=manual,layer_id=1]"}
    assert {k[1] for k in lacking} - expected_extra == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    # One record per file: the dumper splits tuples into one file per tensor.
    assert len(run.records()) == len(files)
    manual = run.records(module=r"^mlp_out\[kind=manual,layer_id=1\]$")
    assert [r.step for r in manual] == [0, 1, 2] and manual[0].extra["dims"] == "t h"
    # input_ids is a core field dumped by the root and again by `model` (its kwarg): calls 0, 1.
    assert [r.call for r in run.records(module="^input_ids$", step=0)] == [0, 1]
    t1 = run.tokens(1)
    assert t1["request_ids"] == ["req-a"] and t1["request"] == [0] and t1["batch_shape"] == [1, 1]


def test_pass_dump_equals_capture_and_undoes_flush_order(dumps):
    run = tt.open(dumps["pass-dump"])
    assert run.info["engine"]["name"] == "vllm-debug-tensor-dump"
    compared, lacking = compare_to_capture(run, tt.open(dumps["cap-toy"]))
    assert lacking == [] and compared == len(run.records())
    # lm_head and the top-level output of step s are written into Pass(s+1): mapped back.
    heads = run.records(module="^lm_head$")
    assert [r.step for r in heads] == [0, 1] and all(r.extra["from_next_pass_file"] for r in heads)
    assert heads[0].shape == (8, 64)                     # step 0 prefilled 5 + 3 tokens
    assert any("step 2 (the last pass) has no model, lm_head" in n for n in run.notes)
    # The token table comes from the top-level module's input_ids/positions (inputs 0, 1).
    assert run.tokens(0)["request"] == [0] * 5 + [1] * 3
    assert run.tokens(0)["position"] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert run.tokens(2)["request"] == [0, 1] and run.tokens(2)["position"] == [6, 4]
    # Record count: one per tensor entry of every pass file.
    n = 0
    for f in sorted(run.path.rglob("Pass*.pt")):
        n += sum(len(v) if isinstance(v, list) else 1 for v in torch.load(f, weights_only=True).values())
    assert len(run.records()) == n


def test_pass_dump_sglang_flavor_two_ranks_and_skipped_warmup(tmp_path):
    torch.manual_seed(1)
    toy = ToyForCausalLM().eval()
    # Rank 1 skips one warm-up pass: its first file starts with that pass's tail.
    with PassDumper(toy, tmp_path / "d", flavor="sglang", tp_size=2, tp_rank=0), \
            PassDumper(toy, tmp_path / "d", flavor="sglang", tp_size=2, tp_rank=1, skip_passes=1):
        toy_engine_steps(toy, [[1, 2, 3], [4, 5, 6, 7]], 3, sglang=True)
    run = tt.open(tmp_path / "d")
    assert run.ranks == [0, 1] and run.info["engine"]["name"] == "sglang-tensor-dump"
    assert run.steps() == [0, 1, 2]
    # seq_lens split requests exactly even where positions run on (3 then 4 at step 1).
    t1 = run.tokens(1, rank=0)
    assert t1["layout"] == "flat" and t1["request"] == [0, 1] and t1["position"] == [3, 4]
    assert run.records(module="^model$", role="input", path="^forward_batch_info.seq_lens$", rank=0)
    # Rank 1: two pass files; the warm-up tail (model, lm_head) leading its first file is
    # listed in notes, not mapped to a step.
    assert sorted({r.step for r in run.records(rank=1)}) == [0, 1]
    assert any("skipped warm-up pass" in n and "model, lm_head" in n for n in run.notes)
    entries = sum(len(v) if isinstance(v, list) else 1
                  for f in sorted((tmp_path / "d").glob("TP1_*/Pass*.pt"))
                  for v in torch.load(f, weights_only=True).values())
    assert len(run.records(rank=1)) == entries - 2


def test_vllm_il_calls_skips_and_post_forward_inputs(tmp_path):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.big = nn.Linear(8, 64)

        def forward(self, x):
            return self.big(self.lin(self.lin(x))), None

    m = Twice().eval()
    x = torch.randn(3, 8)
    with VllmIntermediateLogger(m, tmp_path / "il", max_tensor_size=100, log_post_fwd_inputs=True) as il, \
            torch.no_grad():
        m(x)
    with tt.capture(m, tmp_path / "cap"), torch.no_grad():
        m(x)
    run = tt.open(il.run_dir)
    assert (il.run_dir / "step_0" / "lin_1").is_dir()
    assert [r.call for r in run.records(module="^lin$", role="output")] == [0, 1]
    big = run.records(module="^big$", role="output")
    assert big[0].kind == "stats" and "max_tensor_size" in big[0].extra["skipped"] and big[0].shape == (3, 64)
    post = run.records(path=r"^post_forward\.")
    assert post and all(r.role == "input" for r in post)
    compared, lacking = compare_to_capture(run, tt.open(tmp_path / "cap"))
    assert set(r.key for r in post) == set(lacking)
    assert compared == len(run.records()) - len(post) - 1  # all but the size-skipped one
    # calls are counted per step: order follows module_calls.txt with outputs after nested calls
    seqs = [(r.module, r.call, r.role) for r in run.records() if not r.path.startswith("post_forward")]
    assert seqs.index(("lin", 1, "input")) < seqs.index(("lin", 1, "output"))


def test_hf_debugger_printed_and_pruned_layers(tmp_path):
    from transformers import model_addition_debugger_context

    torch.manual_seed(2)
    toy = ToyForCausalLM(layers=3).eval()
    ids, pos = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    try:
        with model_addition_debugger_context(toy, debug_path=str(tmp_path / "repr")):
            toy(ids, pos)  # defaults: use_repr=True, do_prune_layers=True
        with model_addition_debugger_context(toy, debug_path=str(tmp_path / "files"), use_repr=False):
            toy(ids, pos)
    finally:
        torch.set_printoptions(profile="default", sci_mode=None)
    printed = tt.open(tmp_path / "repr")
    assert printed.records() and not printed.records(kind="tensor")
    assert any("use_repr=True" in n for n in printed.notes)
    rec = printed.records(module=r"^lm_head$", role="output")[0]
    assert rec.kind == "stats" and rec.shape == (3, 64) and "mean" in rec.extra["summary"]
    # Layer 1 is pruned from the JSON but its files exist: mapped from their names.
    files = tt.open(tmp_path / "files")
    mid = files.records(module=r"^model\.layers\.1\.")
    assert mid and all(r.extra.get("path_from_file_name") for r in mid)
    assert len(files.records(kind="tensor")) == len(list((tmp_path / "files").glob("*.safetensors")))


# -- diff: a dump against the tensortap capture of the same forward ---------------------------

CAPTURE_OF = {"hf-debugger": "cap-forward", "vllm-il": "cap-generate", "sglang-dumper": "cap-generate",
              "pass-dump": "cap-toy"}


@pytest.mark.parametrize("fmt", list(CAPTURE_OF))
def test_diff_dump_against_capture_agrees(dumps, fmt, capsys):
    cap, src = str(dumps[CAPTURE_OF[fmt]]), str(dumps[fmt])
    # The writers emulate engines on HF/toy models, so they hold transformers' (or the toy's)
    # names: the default mapping pairs them (anchors first; raw names when anchors pair
    # nothing, with a note saying so), no --map needed (issue 19).
    assert cli(["diff", cap, src, "--json", "--format-b", fmt]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["first_divergence"] is None and report["verdict"] == "agree"
    # Every record the dump shares with the capture (tensors and values) was compared: all agree.
    twins = {r.key for r in tt.open(cap).records()}
    shared = [r for r in tt.open(src).records() if r.key in twins]
    assert len(report["rows"]) == len(shared) > 30
    assert all(row["status"] == "ok" for row in report["rows"])
    # The Python API takes paths of dumps too (detected), in either order.
    rep = tt.diff(src, cap, mapping="none")
    assert rep.exit_code == 0 and rep.first_divergence is None


def test_diff_finds_planted_bug_in_a_pass_dump(dumps, tmp_path):
    toy = dumps["toy"]
    bad = ToyForCausalLM().eval()
    bad.load_state_dict(toy.state_dict())
    with torch.no_grad():
        bad.model.layers[1].up.weight[0, 0] += 0.5
    with PassDumper(bad, tmp_path / "bad"):
        toy_engine_steps(bad, [[1, 2, 3, 4, 5], [7, 8, 9]], 3)
    rep = tt.diff(dumps["pass-dump"], tmp_path / "bad")
    assert rep.exit_code == 1
    first = rep.first_divergence
    assert (first.module, first.step) == ("model.layers.1.up", 0)


# -- CLI: ls, show, convert on every format ----------------------------------------------------

@pytest.mark.parametrize("fmt", ["hf-debugger", "vllm-il", "sglang-dumper", "pass-dump"])
def test_cli_ls_show_convert(dumps, fmt, tmp_path, capsys):
    src = str(dumps[fmt])
    run = tt.open(src)
    assert cli(["ls", src, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == len(run.records())
    rec = run.records(kind="tensor")[0]
    assert cli(["show", src, rec.module, "--step", str(rec.step), "--format", fmt]) == 0
    assert "source:" in capsys.readouterr().out
    out = tmp_path / "native"
    assert cli(["convert", src, str(out)]) == 0
    assert "record(s)" in capsys.readouterr().out
    native = tt.open(out)
    assert type(native) is Run and native.status == "complete"
    assert native.info["engine"]["name"] == run.info["engine"]["name"]
    assert native.info["imported"]["format"] == fmt
    a, b = run.records(), native.records()
    assert [r.key for r in a] == [r.key for r in b] and len(b) == len(a)
    for x, y in zip(a, b):
        assert x.kind == y.kind and x.stats == y.stats
        if x.kind == "tensor":
            assert torch.equal(run.load(x), native.load(y))
    for s in run.steps():
        assert native.tokens(s) == run.tokens(s)
    # The wrong --format is one clear line and exit 2.
    wrong = "hf-debugger" if fmt != "hf-debugger" else "vllm-il"
    assert cli(["ls", src, "--format", wrong]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tensortap: error:") and "\n" not in err


def test_unknown_and_ambiguous_layouts(tmp_path, dumps, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["ls", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no known dump layout" in err and "--format" in err
    two = tmp_path / "two"
    for name in ("a", "b"):
        (two / name / "step_0").mkdir(parents=True)
    assert cli(["ls", str(two)]) == 2
    assert "point at one of them" in capsys.readouterr().err


def test_damaged_pass_file_is_listed_not_dropped(tmp_path):
    torch.manual_seed(3)
    toy = ToyForCausalLM().eval()
    with PassDumper(toy, tmp_path / "d") as pd:
        toy_engine_steps(toy, [[1, 2, 3]], 3)
    (pd.dir / "Pass00001.pt").write_bytes(b"PK\x03\x04 cut short by a crash")
    run = tt.open(tmp_path / "d")
    assert run.status == "incomplete" and "could not be read" in run.reason
    assert any("Pass00001.pt" in p for p in run.problems)
    # Step 1 keeps only what Pass00002 holds for it (its lm_head); step 0 lost its tail.
    assert {r.module for r in run.records(step=1)} == {"model", "lm_head"}
    assert not run.records(step=0, module="^lm_head$") and run.records(step=0, module="^model.embed")
    assert run.records(step=2)


# -- safety: pickles that would run code --------------------------------------------------------

class _Touch:
    """Unpickling this calls open(path, "w"): a file appears if the pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile(kind: str, root: Path, marker: Path) -> Path:
    evil = {"model.x": torch.ones(2), "model.y": _Touch(marker)}
    if kind == "pass-dump":
        d = root / "TP0_PP0_Rank0_pid7"
        d.mkdir(parents=True)
        torch.save(evil, d / "Pass00000.pt")
    elif kind == "sglang-dumper":
        root.mkdir(parents=True)
        torch.save({"value": _Touch(marker), "meta": {}},
                   root / "step=0___rank=0___dump_index=1___name=x___recompute_status=disabled.pt")
    else:
        d = root / "run" / "step_0" / "lin"
        d.mkdir(parents=True)
        (d / "outputs.json").write_text(json.dumps({"type": "tensor", "shape": [2], "dtype": "torch.float32"}))
        torch.save(_Touch(marker), d / "outputs_cpu.pt")
    return root


@pytest.mark.parametrize("kind", ["pass-dump", "sglang-dumper", "vllm-il"])
def test_hostile_pickle_is_refused_and_not_executed(tmp_path, kind, capsys):
    """A refused file is a listed problem naming --trust-pickle; the rest stays readable."""
    marker = tmp_path / "PWNED"
    dump = _hostile(kind, tmp_path / "dump", marker)
    assert cli(["ls", str(dump)]) == 0
    out = capsys.readouterr()
    assert "--trust-pickle" in out.out + out.err and "Traceback" not in out.err
    assert not marker.exists(), "the pickle ran"
    run = tt.open(dump)
    run.records()
    assert run.status != "complete" and any("--trust-pickle" in p for p in run.problems), run.problems
    assert not marker.exists()
    # Only the user's explicit opt-in runs it.
    run = tt.open(dump, trust_pickle=True)
    assert run.records() and marker.exists()


def test_hostile_pickle_real_command(tmp_path):
    """The installed command line: refused without the flag, loaded with it."""
    marker = tmp_path / "PWNED"
    dump = _hostile("pass-dump", tmp_path / "dump", marker)
    p = subprocess.run([sys.executable, "-m", "tensortap.cli.main", "ls", str(dump)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "--trust-pickle" in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()
    p = subprocess.run([sys.executable, "-m", "tensortap.cli.main", "ls", str(dump), "--trust-pickle"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert marker.exists() and "model.y" in p.stdout


def test_il_sidecars_in_other_forms_are_metadata_not_records(tmp_path):
    """Writers describe tensors differently ({"type": "torch.Tensor"}, bare shape/dtype, a
    plain list): the .json beside a .pt is its metadata, never a value record."""
    run = tmp_path / "il" / "0000-uuid"
    for name, outputs, inputs in (("model.a", {"shape": [2, 3], "dtype": "torch.float32"},
                                   [{"shape": [2, 3], "dtype": "torch.float32"}]),
                                  ("model.b", {"type": "torch.Tensor", "shape": [2, 3]},
                                   {"description": "whatever this writer says"})):
        d = run / "step_0" / name
        d.mkdir(parents=True)
        (d / "outputs.json").write_text(json.dumps(outputs))
        (d / "inputs.json").write_text(json.dumps(inputs))
        torch.save(torch.ones(2, 3), d / "outputs_cpu.pt")
        torch.save(torch.zeros(2, 3), d / "inputs_0_cpu.pt")
    recs = tt.open(tmp_path / "il").records()
    assert all(r.kind == "tensor" for r in recs), [(r.module, r.role, r.path, r.kind) for r in recs]
    assert {(r.module, r.role, r.path) for r in recs} == {
        ("model.a", "output", ""), ("model.a", "input", "0"), ("model.b", "output", ""), ("model.b", "input", "0")}
