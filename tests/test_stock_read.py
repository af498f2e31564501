"""Stock OLMo-core MoE checkpoints (both expert layouts, saved with OLMo-core's own checkpoint
functions) are read as the variable-width model: logits equal what the stock model computes,
the layout comes from config.json, unsupported features are refused, and `info` says what it is."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hf_helpers import max_diff, tokens
from olmo_core.nn.feed_forward import FeedForwardConfig
from olmo_core.nn.moe import LatentMoEConfig
from stock_helpers import (
    is_expert,
    reference_logits,
    save_stock,
    stock_config,
    stock_model,
    variable_rows,
)

from olmo_flex_ext.checkpoint import iter_tensors, load_model, read_model_config, tensor_meta
from olmo_flex_ext.cli import main
from olmo_flex_ext.errors import UserError
from olmo_flex_ext.models import expert_widths_per_layer
from olmo_flex_ext.nn.moe import VariableMoE

LAYOUTS = ["default", "dropless"]
# (experts, top_k, hidden); hidden 32 == d_model, where both layouts have the same shapes
CASES = [(2, 1, 48), (2, 2, 48), (4, 1, 48), (4, 2, 48), (4, 4, 48), (2, 2, 32), (4, 1, 32)]


def checkpoint(tmp_path, layout, experts=2, top_k=2, hidden=48, seed=0, **moe):
    config = stock_config(layout, experts=experts, top_k=top_k, hidden=hidden, **moe)
    model = stock_model(config, seed)
    return model, save_stock(model, config, tmp_path / f"{layout}-{experts}x{hidden}-top{top_k}")


@pytest.mark.parametrize("experts,top_k,hidden", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_model_computes_what_the_stock_model_computes(
    tmp_path, layout, experts, top_k, hidden
):
    # The default type keeps at most capacity_factor * top_k / experts of the tokens per expert;
    # with this factor it keeps all, so the stock model is the dropless function (see docs).
    moe = {"capacity_factor": experts / top_k} if layout == "default" else {}
    stock, ckpt = checkpoint(tmp_path, layout, experts, top_k, hidden, seed=experts + top_k, **moe)
    x = tokens()
    expected = reference_logits(stock, x)

    model = load_model(ckpt)
    blocks = list(model.blocks.values())
    assert all(isinstance(b.feed_forward_moe, VariableMoE) for b in blocks)
    assert [b.feed_forward_moe.expert_widths for b in blocks] == [[hidden] * experts] * 2
    assert all(b.feed_forward_moe.top_k == top_k for b in blocks)
    with torch.no_grad():
        assert max_diff(model(x), expected) < 1e-5


def test_hybrid_blocks_keep_their_dense_mlp(tmp_path):
    """OLMo-core's hybrid MoE blocks (a dense MLP beside the experts) convert the same way."""
    from olmo_core.nn.transformer import TransformerBlockType

    config = stock_config("default")
    config.block.name = TransformerBlockType.moe_hybrid_reordered_norm
    config.block.feed_forward = FeedForwardConfig(hidden_size=40, bias=False)
    stock = stock_model(config, seed=4)
    ckpt = save_stock(stock, config, tmp_path / "hybrid")
    x = tokens()
    with torch.no_grad():
        assert max_diff(load_model(ckpt)(x), reference_logits(stock, x)) < 1e-5


def test_the_layout_comes_from_the_config_not_the_shapes(tmp_path):
    stock, ckpt = checkpoint(tmp_path, "default", hidden=32)  # d_model 32: same shapes as dropless
    x = tokens()
    expected = reference_logits(stock, x)
    retyped = tmp_path / "retyped"
    shutil.copytree(ckpt, retyped)
    config = json.loads((retyped / "config.json").read_text())
    config["model"]["block"]["feed_forward_moe"]["name"] = "dropless"
    (retyped / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        assert max_diff(load_model(ckpt)(x), expected) < 1e-5
        assert max_diff(load_model(retyped)(x), expected) > 1e-2  # read as the other layout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensors_are_read_converted_one_at_a_time(tmp_path, layout):
    stock, ckpt = checkpoint(tmp_path, layout, experts=4, hidden=48)
    meta = tensor_meta(ckpt)
    assert meta["blocks.0.feed_forward_moe.experts.mlp.w1"][0] == (4 * 48, 32)
    for name, tensor in iter_tensors(ckpt, list(meta)):
        stored = stock.state_dict()[name]
        expected = variable_rows(name, stored, layout, 4, 48) if is_expert(name) else stored
        assert tuple(tensor.shape) == meta[name][0] and torch.equal(tensor, expected), name
    assert expert_widths_per_layer(read_model_config(ckpt)) == [[48] * 4] * 2


@pytest.mark.parametrize(
    "moe, feature",
    [
        ({"shared_mlp": FeedForwardConfig(hidden_size=64, bias=False)}, "shared MLP"),
        ({"latent_moe": LatentMoEConfig(latent_dim=16)}, "latent MoE"),
    ],
)
def test_features_the_variable_moe_lacks_are_refused_with_one_line(tmp_path, capsys, moe, feature):
    _, ckpt = checkpoint(tmp_path, "default", **moe)
    with pytest.raises(UserError, match=feature):
        load_model(ckpt)
    with pytest.raises(SystemExit) as e:
        main(["info", str(ckpt)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and feature in err
    assert "\n" not in err and str(ckpt) in err


def test_fused_v2_blocks_are_refused(tmp_path, capsys):
    _, ckpt = checkpoint(tmp_path, "dropless")
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["block"]["name"] = "moe_fused_v2"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        main(["info", str(ckpt)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "moe_fused_v2" in err and "\n" not in err


@pytest.mark.parametrize("layout", LAYOUTS)
def test_info_names_the_stock_layout_and_what_it_becomes(tmp_path, capsys, layout):
    _, ckpt = checkpoint(tmp_path, layout, experts=4, top_k=1, hidden=48)
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"stock OLMo-core MoE, layers 0-1: {layout} layout" in out
    assert "variable-width MoE with expert widths [48, 48, 48, 48]" in out
    assert "experts: 4 per layer, top-1 routing" in out
    if layout == "default":
        assert "(4 x 32, 48)); converted while reading (w1/w3 transposed per expert" in out
        assert "drops tokens beyond each expert's capacity" in out  # top-1 of 4
    else:
        assert "(4 x 48, 32)); read as stored" in out and "capacity" not in out
