"""Upcycling a dense OLMo-2 model into experts that are copies of its MLP."""

import pytest
import torch
from hf_helpers import (
    D_MODEL,
    VOCAB,
    hf_flex,
    hf_logits,
    hf_olmo2,
    load_hf,
    max_diff,
    our_logits,
    randomize,
    tokens,
)
from olmo_core.nn.feed_forward import FeedForwardConfig
from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig
from safetensors.torch import save_file

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import CheckpointError, read_config, save_model
from olmo_flex_ext.hf import export_hf, upcycle

TOL = 1e-5
HIDDEN = 48


def _dense(tmp_path):
    config = TransformerConfig.llama_like(
        d_model=D_MODEL,
        vocab_size=VOCAB,
        n_layers=2,
        n_heads=4,
        block_name=TransformerBlockType.reordered_norm,
        qk_norm=True,
        layer_norm_eps=1e-6,
        feed_forward=FeedForwardConfig(hidden_size=HIDDEN, bias=False),
    )
    model = randomize(config.build(init_device="cpu"), seed=5).eval()
    save_model(tmp_path / "dense", config, model.state_dict())
    return model


def test_upcycled_olmo2_with_all_experts_equals_dense(tmp_path):
    dense = hf_olmo2(tmp_path / "olmo2", width=HIDDEN)
    x = tokens(4)
    reference = hf_logits(dense, x)

    upcycle(tmp_path / "olmo2", tmp_path / "moe", num_experts=3)
    moe = load_model(tmp_path / "moe")
    assert moe.blocks["1"].feed_forward_moe.expert_widths == [HIDDEN] * 3
    assert max_diff(our_logits(moe, x), reference) < TOL
    assert read_config(tmp_path / "moe")["olmo_flex"]["hf"]["eos_token_id"] == 0

    export_hf(tmp_path / "moe", tmp_path / "flex")  # a transformers FlexOlmo, same function
    flex = load_hf(tmp_path / "flex")
    assert flex.config.num_experts == 3 and flex.config.eos_token_id == 0
    assert max_diff(hf_logits(flex, x), reference) < TOL


def test_top_k_below_experts_scales_mlp_by_chosen_probabilities(tmp_path):
    dense = _dense(tmp_path)
    upcycle(tmp_path / "dense", tmp_path / "moe", num_experts=3, top_k=2, seed=1)
    moe = load_model(tmp_path / "moe")
    x = torch.randn(2, 7, D_MODEL, generator=torch.Generator().manual_seed(0))
    for i in ("0", "1"):
        layer = moe.blocks[i].feed_forward_moe
        with torch.no_grad():
            out = layer(x)
            mlp = dense.blocks[i].feed_forward(x)
        probs = torch.softmax(x @ layer.router.weight.view(3, D_MODEL).t(), dim=-1)
        chosen = probs.topk(2, dim=-1).values.sum(-1, keepdim=True)
        assert max_diff(out, chosen * mlp) < TOL
        assert chosen.min() < 0.99  # the scaling is real: top-2 of 3 is not the dense model


def test_narrow_experts_and_router_rows_from_file(tmp_path):
    dense = _dense(tmp_path)
    rows = torch.randn(2, D_MODEL)
    save_file({"router": rows}, str(tmp_path / "router.safetensors"))
    upcycle(
        tmp_path / "dense",
        tmp_path / "moe",
        num_experts=2,
        expert_widths=[HIDDEN, 20],
        router_from=tmp_path / "router.safetensors",
    )
    moe = load_model(tmp_path / "moe")
    for i in ("0", "1"):
        mlp, ff = moe.blocks[i].feed_forward_moe.experts.mlp, dense.blocks[i].feed_forward
        assert mlp.expert_widths == [HIDDEN, 20]
        for e, width in enumerate([HIDDEN, 20]):
            s = mlp.expert_slice(e)
            assert torch.equal(mlp.w1[s], ff.w1.weight[:width])
            assert torch.equal(mlp.w3[s], ff.w3.weight[:width])
            assert torch.equal(mlp.w2[s], ff.w2.weight[:, :width].t())
        assert torch.equal(moe.blocks[i].feed_forward_moe.router.weight, rows.reshape(-1))

    # Router rows can also be copied from another MoE checkpoint (ours or FlexOlmo).
    upcycle(tmp_path / "dense", tmp_path / "copy", num_experts=2, router_from=tmp_path / "moe")
    copy = load_model(tmp_path / "copy")
    assert torch.equal(copy.blocks["1"].feed_forward_moe.router.weight, rows.reshape(-1))


def test_upcycle_refuses_what_it_cannot_grow(tmp_path):
    _dense(tmp_path)
    with pytest.raises(CheckpointError, match="between 1 and the dense MLP width"):
        upcycle(tmp_path / "dense", tmp_path / "x", num_experts=2, expert_widths=[HIDDEN + 1, 8])
    hf_flex(tmp_path / "flex")
    with pytest.raises(CheckpointError, match="already a MoE"):
        upcycle(tmp_path / "flex", tmp_path / "x", num_experts=2)
    with pytest.raises(CheckpointError, match="router rows"):
        upcycle(tmp_path / "dense", tmp_path / "x", num_experts=3, router_from=torch.zeros(2, 5))
    assert not (tmp_path / "x").exists()


def test_upcycle_command(tmp_path, capsys):
    from olmo_flex_ext.cli import main

    _dense(tmp_path)
    argv = [
        "upcycle",
        str(tmp_path / "dense"),
        str(tmp_path / "moe"),
        "--experts",
        "2",
        "--widths",
        "48,20",
        "--top-k",
        "1",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    made = read_config(tmp_path / "moe")["olmo_flex"]
    assert made["made_by"] == "olmo-flex upcycle" and made["expert_widths"] == [[48, 20]] * 2
    moe = load_model(tmp_path / "moe").blocks["0"].feed_forward_moe
    assert moe.router.top_k == 1 and moe.expert_widths == [48, 20]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err
