"""Disk full: capture onto a real, small tmpfs mounted by the test (CI runs as root).

The observed program must run to completion with unchanged results, the run must be
``incomplete`` with reason ``disk full``, and every record committed before the disk
filled must load and verify.
"""

from __future__ import annotations

import gc
import subprocess

import pytest
import torch
import torch.nn as nn

import tensortap as tt
from tensortap.store.verify import verify_run


def _mount_tmpfs(path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        # Not a skip: this guarantee is only tested here, so a machine that cannot run
        # the test must say so loudly.
        pytest.fail(f"cannot mount a {size} tmpfs at {path}: this test needs root (or "
                    f"CAP_SYS_ADMIN), as CI has; mount said: {(r.stderr or r.stdout).strip()}")


def _unmount(path) -> None:
    gc.collect()  # drop mmaps of shards held by Run objects
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "2m")
    yield mnt
    _unmount(mnt)


def _check_disk_full_run(run_dir) -> None:
    run = tt.open(run_dir)
    assert run.status == "incomplete"
    assert run.reason is not None and "disk full" in run.reason, run.reason
    recs = run.records()
    assert recs, "nothing was committed before the disk filled"
    assert run.problems == [] and run.notes == []       # no bad or torn manifest line
    for rec in recs:
        if rec.has_data:
            run.load(rec)                               # checksum, shape, dtype
    res = verify_run(run_dir)
    assert res.ok, [str(p) for p in res.errors]
    assert res.warnings == [], [str(p) for p in res.warnings]   # rolled back: no temp file, no orphan
    run.close()


def test_disk_full_plain_module(small_fs):
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)]).eval()
    xs = [torch.randn(32, 256, generator=torch.Generator().manual_seed(i)) for i in range(40)]
    with torch.no_grad():
        expected = [net(x) for x in xs]
    run_dir = small_fs / "run"
    outs = []
    # ~330 KB of tensors per forward, 13 MB in all, onto 2 MiB.
    with torch.no_grad(), tt.capture(net, run_dir, flush_interval=0.01, shard_bytes=100_000):
        for x in xs:
            outs.append(net(x))
    assert len(outs) == len(xs)                         # the program ran to the end
    assert all(torch.equal(a, b) for a, b in zip(outs, expected))
    _check_disk_full_run(run_dir)
    status = tt.open(run_dir).rank_status()[0]
    assert status["status"] == "incomplete" and status["reason"] == "disk full"


def test_disk_full_hf_generate(tmp_path, hf_model):
    """A real transformers generate() under capture on a 512 KiB filesystem: it still
    generates exactly what it generates without capture."""
    from tensortap.capture.config import build_config
    from tensortap.integrations.hf import capture_generate

    model, tok = hf_model
    prompts = ["Paris is the capital of", "The quick brown fox"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    ref_text = tok.batch_decode(ref[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    mnt = tmp_path / "tiny"
    _mount_tmpfs(mnt, "512k")
    try:
        res = capture_generate(None, build_config(out=str(mnt / "run"), flush_interval=0.01, shard_bytes=50_000),
                               prompts=prompts, max_new_tokens=6, model=model, tokenizer=tok)
        assert res["texts"] == ref_text
        _check_disk_full_run(mnt / "run")
    finally:
        _unmount(mnt)
