"""Unit tests of the anchor adapters' rules: TP shard layout and expression evaluation."""

from __future__ import annotations

import torch

from tensortap.compare.anchors import row_keys_for_shape
from tensortap.integrations.anchors.vocab import AnchorExpr, Ref, anchor_feeds, anchor_order_key
from tensortap.integrations.anchors.structure import model_dims
from tensortap.integrations.anchors.vllm import shard_layout as _shard_layout


def shard_layout(cfg, tp):
    dims = model_dims(cfg)
    return _shard_layout(dims, tp) if dims else None

CFG = {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16, "hidden_size": 128,
       "intermediate_size": 256}


def test_shard_layout_splits_heads_and_replicates_kv():
    one = shard_layout(CFG, 1)
    assert (one.q, one.kv, one.all_ranks, one.kv_ranks) == (128, 32, (0,), (0,))
    two = shard_layout(CFG, 2)
    assert (two.q, two.kv) == (64, 16) and two.kv_ranks == (0, 1)
    # 4 ranks, 2 KV heads: each KV head lives on 2 consecutive ranks; take each once.
    four = shard_layout(CFG, 4)
    assert (four.q, four.kv) == (32, 16) and four.kv_ranks == (0, 2)
    assert shard_layout({"num_attention_heads": 2}, 1) is None   # no hidden size


def test_unsharding_math_reassembles_qkv_from_rank_pieces():
    """Splitting a TP=1 QKV projection the way QKVParallelLinear does, then applying the
    adapter's per-rank slice-and-concatenate, gives back the full q, k and v."""
    torch.manual_seed(0)
    tokens, hidden = 5, 128
    x = torch.randn(tokens, hidden, dtype=torch.float64)
    wq, wk, wv = (torch.randn(n, hidden, dtype=torch.float64) for n in (128, 32, 32))
    full_q, full_k, full_v = x @ wq.T, x @ wk.T, x @ wv.T
    for tp in (1, 2, 4):
        lay = shard_layout(CFG, tp)
        kv_heads_per_rank = lay.kv // 16
        per_rank = []
        for r in range(tp):
            q_r = wq[r * lay.q:(r + 1) * lay.q]
            kv_head = (r * 2) // tp if tp > 2 else r * kv_heads_per_rank  # replicated beyond 2 ranks
            k_r = wk[kv_head * 16:(kv_head + kv_heads_per_rank) * 16]
            v_r = wv[kv_head * 16:(kv_head + kv_heads_per_rank) * 16]
            per_rank.append(x @ torch.cat([q_r, k_r, v_r]).T)
        q = torch.cat([per_rank[r][..., :lay.q] for r in lay.all_ranks], -1)
        k = torch.cat([per_rank[r][..., lay.q:lay.q + lay.kv] for r in lay.kv_ranks], -1)
        v = torch.cat([per_rank[r][..., lay.q + lay.kv:lay.q + 2 * lay.kv] for r in lay.kv_ranks], -1)
        assert torch.allclose(q, full_q) and torch.allclose(k, full_k) and torch.allclose(v, full_v), tp


def test_row_keys_for_hf_batch_vllm_flat_and_last_rows():
    hf = {"batch_shape": [2, 3], "request": [0, 0, 0, -1, 1, 1], "position": [0, 1, 2, -1, 0, 1]}
    n, keys = row_keys_for_shape(hf, (2, 3, 8), "tokens")
    assert n == 6 and keys[3] is None and keys[5] == (1, 1)
    n, keys = row_keys_for_shape(hf, (2, 1, 50), "tokens")        # logits of the last column only
    assert keys == [(0, 2), (1, 1)]
    flat = {"batch_shape": [5], "request": [0, 0, 0, 1, 1], "position": [0, 1, 2, 0, 1]}
    assert row_keys_for_shape(flat, (5, 8), "tokens")[1] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert row_keys_for_shape(flat, (2, 50), "last") == (2, [(0, 2), (1, 1)])
    assert row_keys_for_shape(flat, (3, 8), "tokens") is None


def test_feeds_and_order():
    assert anchor_feeds("layers.0.resid_pre", [0, 1]) == ["embed"]
    assert anchor_feeds("layers.1.resid_pre", [0, 1]) == ["layers.0.resid_post"]
    assert anchor_feeds("layers.1.down", [0, 1]) == ["layers.1.gate", "layers.1.up"]
    assert anchor_feeds("logits", [0, 1]) == ["final_norm"]
    names = ["logits", "layers.1.q", "embed", "layers.0.resid_post", "final_norm", "layers.0.q"]
    assert sorted(names, key=anchor_order_key) == [
        "embed", "layers.0.q", "layers.0.resid_post", "layers.1.q", "final_norm", "logits"]
    e = AnchorExpr((Ref("m", "output", "0"),), 0, 4, ranks=(0, 1))
    assert "concat over ranks [0, 1]" in e.describe()


def test_family_structure_feeds_and_identities():
    from tensortap.integrations.anchors.vocab import identity_rules
    gemma = {f"layers.0.{x}" for x in ("resid_pre", "attn_out", "attn_post_norm", "resid_mid",
                                        "mlp_out", "mlp_post_norm", "resid_post", "up", "down")}
    assert anchor_feeds("layers.0.resid_mid", [0], gemma) == ["layers.0.resid_pre", "layers.0.attn_post_norm"]
    assert anchor_feeds("layers.0.down", [0], gemma) == ["layers.0.up"]          # GPT-2: no gate
    assert identity_rules(0, gemma)[1] == ("layers.0.resid_post", ("layers.0.resid_mid", "layers.0.mlp_post_norm"))
    neox = {f"layers.0.{x}" for x in ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")}
    assert identity_rules(0, neox, parallel_residual=True) == [
        ("layers.0.resid_post", ("layers.0.resid_pre", "layers.0.attn_out", "layers.0.mlp_out"))]
    assert anchor_feeds("layers.0.mlp_in", [0], neox, True) == ["layers.0.resid_pre"]


def test_row_keys_for_flattened_and_leading_one_tensors():
    hf = {"batch_shape": [2, 3], "request": [0, 0, 0, -1, 1, 1], "position": [0, 1, 2, -1, 0, 1]}
    assert row_keys_for_shape(hf, (6, 4), "tokens")[0] == 6              # router logits [B*S, E]
    flat = {"batch_shape": [5], "request": [0, 0, 0, 1, 1], "position": [0, 1, 2, 0, 1]}
    assert row_keys_for_shape(flat, (1, 5, 8), "tokens")[0] == 5         # vLLM Transformers backend


def test_expression_ops_interleave_transpose_softcap():
    from tensortap.integrations.anchors.structure import interleaved_qkv
    e = AnchorExpr((Ref("m", "output", ""),), heads_first=True, softcap=30.0, scale=2.0, cols=(0, 2))
    assert e.shape_of((2, 4, 7, 64)) == (2, 7, 4, 64) and e.width(64) == 2
    assert "softcap 30" in e.describe() and "interleaved" in e.describe()
    assert interleaved_qkv({"model_type": "gpt_neox"}, "gpt_neox.layers.0.attention.query_key_value")
    assert not interleaved_qkv({"model_type": "gpt2"}, "transformer.h.0.attn.c_attn")
