"""Hugging Face FlexOlmo import/export against transformers' own model as the oracle."""

import json

import pytest
import torch
from hf_helpers import (
    hf_flex,
    hf_logits,
    load_hf,
    max_diff,
    our_logits,
    randomize,
    tokens,
)
from safetensors import safe_open

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import lazy_state, read_model_config, save_model, tensor_meta
from olmo_flex_ext.hf import WIDTHS_KEY, export_hf, import_hf
from olmo_flex_ext.models import expert_widths_per_layer, tiny_flex

TOL = 1e-5


def _hf_tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


@pytest.mark.parametrize(
    "experts,top_k,width,kv_heads,norm_topk",
    [
        (2, 2, 24, 4, False),
        (2, 1, 40, 4, False),
        (4, 1, 16, 2, False),
        (4, 2, 24, 4, True),
        (4, 4, 32, 4, False),
    ],
)
def test_import_export_round_trip_matches_transformers(
    tmp_path, experts, top_k, width, kv_heads, norm_topk
):
    hf = hf_flex(
        tmp_path / "hf",
        experts=experts,
        top_k=top_k,
        width=width,
        kv_heads=kv_heads,
        norm_topk_prob=norm_topk,
    )
    x = tokens()
    reference = hf_logits(hf, x)

    import_hf(tmp_path / "hf", tmp_path / "ours")
    ours = load_model(tmp_path / "ours")
    moe = ours.blocks["0"].feed_forward_moe
    assert moe.router.top_k == top_k and moe.expert_widths == [width] * experts
    assert max_diff(our_logits(ours, x), reference) < TOL

    export_hf(tmp_path / "ours", tmp_path / "back")
    back = load_hf(tmp_path / "back")
    assert back.config.num_experts_per_tok == top_k and back.config.norm_topk_prob == norm_topk
    assert back.config.pad_token_id == 1 and back.config.eos_token_id == 0
    assert max_diff(hf_logits(back, x), reference) < TOL
    # Same weights bit for bit, under the names transformers wrote.
    original, exported = _hf_tensors(tmp_path / "hf"), _hf_tensors(tmp_path / "back")
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[k], exported[k]) for k in original)


def _our_model(tmp_path, widths, top_k, name="ours"):
    config = tiny_flex(widths, top_k=top_k, d_model=32, vocab_size=128)
    model = randomize(config.build(init_device="cpu"), seed=3).eval()
    save_model(tmp_path / name, config, model.state_dict())
    return model


@pytest.mark.parametrize(
    "widths,top_k",
    [([[24, 10], [16, 24]], None), ([[24, 10], [16, 24]], 1), ([24, 8, 16], 2)],
)
def test_variable_widths_export_zero_padded(tmp_path, widths, top_k):
    ours = _our_model(tmp_path, widths, top_k)
    x = tokens(1)
    reference = our_logits(ours, x)

    export_hf(tmp_path / "ours", tmp_path / "hf", max_shard_bytes=40_000)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()  # several shards
    hf = load_hf(tmp_path / "hf")
    assert hf.config.intermediate_size == 24
    assert max_diff(hf_logits(hf, x), reference) < TOL

    per_layer = expert_widths_per_layer(read_model_config(tmp_path / "ours"))
    tensors = _hf_tensors(tmp_path / "hf")
    for i, layer in enumerate(per_layer):
        for e, w in enumerate(layer):
            prefix = f"model.layers.{i}.mlp.experts.{e}."
            assert tensors[prefix + "gate_proj.weight"][w:].count_nonzero() == 0
            assert tensors[prefix + "up_proj.weight"][w:].count_nonzero() == 0
            assert tensors[prefix + "down_proj.weight"][:, w:].count_nonzero() == 0
            assert tensors[prefix + "gate_proj.weight"][:w].count_nonzero() == w * 32

    # Import restores the recorded widths and every weight exactly.
    import_hf(tmp_path / "hf", tmp_path / "again")
    again = load_model(tmp_path / "again")
    assert expert_widths_per_layer(read_model_config(tmp_path / "again")) == per_layer
    original = ours.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in again.state_dict().items())

    # Keeping the padding gives full-width experts that compute the same function.
    import_hf(tmp_path / "hf", tmp_path / "padded", keep_padding=True)
    padded = load_model(tmp_path / "padded")
    assert padded.blocks["0"].feed_forward_moe.expert_widths == [24] * len(per_layer[0])
    assert max_diff(our_logits(padded, x), reference) < TOL


def test_import_sharded_checkpoint_with_index(tmp_path):
    hf = hf_flex(tmp_path / "hf", experts=4, top_k=2, max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    import_hf(tmp_path / "hf", tmp_path / "ours")
    x = tokens(2)
    assert max_diff(our_logits(load_model(tmp_path / "ours"), x), hf_logits(hf, x)) < TOL


def test_bfloat16_export_and_import(tmp_path):
    ours = _our_model(tmp_path, [24, 12], None)
    export_hf(tmp_path / "ours", tmp_path / "hf", dtype="bfloat16")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config[WIDTHS_KEY] == [[24, 12], [24, 12]]
    assert all(v.dtype == torch.bfloat16 for v in _hf_tensors(tmp_path / "hf").values())
    load_hf(tmp_path / "hf", dtype=torch.bfloat16)

    import_hf(tmp_path / "hf", tmp_path / "back")
    assert {d for _, d in tensor_meta(tmp_path / "back").values()} == {torch.bfloat16}
    back = load_model(tmp_path / "back")  # float32, holding the bf16-rounded weights
    expected = {k: v.to(torch.bfloat16).float() for k, v in ours.state_dict().items()}
    assert all(torch.equal(v, expected[k]) for k, v in back.state_dict().items())
    # lazy_state streams the same tensors one at a time.
    lazy = lazy_state(tmp_path / "back")
    assert torch.equal(lazy["embeddings.weight"].load().float(), expected["embeddings.weight"])


def test_streaming_save_leaves_callers_tensors_intact(tmp_path):
    # save_model frees each streamed tensor once written; that must never touch tensors the
    # caller still holds (a LazyTensor may hand out a tensor, or a view of one, it keeps).
    from olmo_flex_ext.checkpoint import LazyTensor

    config = tiny_flex([24, 8], d_model=32, vocab_size=128)
    state = randomize(config.build(init_device="cpu")).state_dict()
    big = torch.randn(256, 32)
    kept = {k: v.clone() for k, v in state.items()}
    lazy = {k: LazyTensor(tuple(v.shape), v.dtype, lambda v=v: v) for k, v in state.items()}
    lazy["embeddings.weight"] = LazyTensor((128, 32), torch.float32, lambda: big[64:192])
    kept["embeddings.weight"], big_before = big[64:192].clone(), big.clone()
    save_model(tmp_path / "ckpt", config, lazy)
    assert torch.equal(big, big_before)
    assert all(torch.equal(state[k], kept[k]) for k in state if k != "embeddings.weight")
    saved = load_model(tmp_path / "ckpt").state_dict()
    assert all(torch.equal(saved[k], kept[k]) for k in state)
