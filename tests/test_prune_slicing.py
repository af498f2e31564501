"""Pruning = zeroing: the pruned model computes what the unpruned one computes with the dropped
neurons zeroed (gate/up rows and down column); streaming and in-memory pruning agree bitwise."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from prune_helpers import tiny_checkpoint, tiny_model

from olmo_flex_ext.checkpoint import iter_tensors, load_model, read_config, tensor_shapes
from olmo_flex_ext.models import expert_widths_per_layer
from olmo_flex_ext.prune.slicing import prune_checkpoint, prune_model, prune_state_dict


def random_keep(widths_per_layer, new_widths_per_layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.sort(torch.randperm(w, generator=g)[:n]).values for w, n in zip(ws, ns)]
        for ws, ns in zip(widths_per_layer, new_widths_per_layer)
    ]


def zeroed_reference(model, keep):
    """The unpruned model with every dropped neuron's w1/w3 rows and w2 row (down column) zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for block, layer_keep in zip(ref.blocks.values(), keep):
            mlp = block.feed_forward_moe.experts.mlp
            for e, k in enumerate(layer_keep):
                s = mlp.expert_slice(e)
                dropped = torch.ones(s.stop - s.start, dtype=torch.bool)
                dropped[k] = False
                for w in (mlp.w1, mlp.w2, mlp.w3):
                    w[s][dropped] = 0.0
    return ref


@pytest.mark.parametrize(
    "widths,top_k,new",
    [
        ((48, 32), None, (48, 12)),  # top_k == number of experts
        ((48, 32, 24), 1, (48, 7, 24)),  # top_k < number of experts
        ((48, 32, 24), 2, (30, 16, 5)),
    ],
)
def test_pruned_logits_equal_zeroed_reference(widths, top_k, new):
    config, model = tiny_model(widths, top_k=top_k, seed=3)
    keep = random_keep(expert_widths_per_layer(config), [list(new)] * config.n_layers)
    new_config, pruned = prune_model(config, model, keep)
    assert expert_widths_per_layer(new_config) == [list(new)] * config.n_layers
    tokens = torch.randint(0, 512, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = pruned(tokens)
        want = zeroed_reference(model, keep)(tokens)
        original = model(tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, original, atol=1e-3)  # the pruning does change the function


def test_streamed_checkpoint_equals_in_memory_and_keeps_the_rest_bitwise(tmp_path):
    src = tiny_checkpoint(tmp_path / "src", (48, 32), seed=4)
    config, model = tiny_model((48, 32), seed=4)
    widths = expert_widths_per_layer(config)
    keep = random_keep(widths, [[48, 10], [48, 20]], seed=1)
    out = prune_checkpoint(src, tmp_path / "pruned", keep, info={"made_from": "test"})

    loaded = load_model(out)
    assert expert_widths_per_layer(read_config_model(out)) == [[48, 10], [48, 20]]
    assert read_config(out)["olmo_flex"] == {"made_from": "test"}
    expected = prune_state_dict(model.state_dict(), widths, keep)
    state = loaded.state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    # the public expert's rows and every non-expert tensor are the source's, bit for bit
    src_state = dict(iter_tensors(src, list(tensor_shapes(src))))
    for name, tensor in state.items():
        if ".experts.mlp.w" in name:
            assert torch.equal(tensor[:48], src_state[name][:48])
        else:
            assert torch.equal(tensor, src_state[name])


def test_failed_prune_writes_nothing(tmp_path):
    src = tiny_checkpoint(tmp_path / "src", (48, 32))
    bad = [[torch.arange(48), torch.tensor([0, 99])]] * 2  # index 99 is outside expert 1
    with pytest.raises(ValueError):
        prune_checkpoint(src, tmp_path / "pruned", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def read_config_model(path):
    from olmo_flex_ext.checkpoint import read_model_config

    return read_model_config(path)


def test_pruned_config_json_is_loadable_by_olmo_core(tmp_path):
    src = tiny_checkpoint(tmp_path / "src", (48, 32))
    keep = [[torch.arange(48), torch.arange(0, 32, 2)]] * 2
    out = prune_checkpoint(src, tmp_path / "pruned", keep)
    raw = json.loads((out / "config.json").read_text())
    assert raw["model"]["block"]["feed_forward_moe"]["expert_widths"] == [48, 16]
