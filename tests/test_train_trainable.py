"""Expert-only training: what with_expert_training freezes and splits, router row masking, refusals."""

from types import SimpleNamespace

import pytest
import torch
from olmo_core.optim import AdamWConfig

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.train.trainable import TrainableExpertsCallback

CONFIG = """
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import TINY_TOKENIZER, flex_experiment, with_expert_training

def build_config():
    config = flex_experiment(
        model=tiny_flex([48, 16], n_layers=2), data_paths=["unused.npy"], tokenizer=TINY_TOKENIZER,
        save_folder="unused", sequence_length=16, global_batch_tokens=32, microbatch_tokens=32,
        max_duration=None, lr=1e-3, weight_decay=0.1, wandb_project=None,
    )
    return with_expert_training(config, experts=[1])
"""


def _experiment(tmp_path):
    """Through load_experiment, which hands the experiment's freeze_params to the model."""
    from olmo_flex_ext.train.experiment import load_experiment

    (tmp_path / "config.py").write_text(CONFIG)
    return load_experiment(str(tmp_path / "config.py"))


def _attach(callback, model, optim):
    callback.trainer = SimpleNamespace(train_module=SimpleNamespace(model=model, optim=optim))
    callback.post_attach()


def test_freezes_all_but_trained_rows_and_routers_and_masks_router_rows(tmp_path):
    from olmo_flex_ext.train.experiment import build_model

    config = _experiment(tmp_path)
    model = build_model(config).to_empty(device="cpu")
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        f"blocks.{i}.feed_forward_moe.{t}": shape
        for i in range(2)
        for t, shape in [
            ("experts.mlp.w1", (16, 64)),
            ("experts.mlp.w2", (16, 64)),
            ("experts.mlp.w3", (16, 64)),
            ("router.weight", (128,)),
        ]
    }
    optim = config.train_module.optim.build(model)
    decay = {id(p): g["weight_decay"] for g in optim.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:  # the routers (shared with the frozen expert) never decay
            assert decay[id(p)] == (0.0 if "router" in name else 0.1), name
    callback = config.trainer.callbacks["trainable_experts"]
    _attach(callback, model, optim)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    callback.pre_optim_step()
    assert model.blocks["0"].feed_forward_moe.experts.mlp.w1.grad.eq(1).all()
    router = model.blocks["1"].feed_forward_moe.router.weight.grad
    assert router[:64].eq(0).all() and router[64:].eq(1).all()


def test_refuses_setups_that_would_move_frozen_rows(tmp_path):
    from olmo_flex_ext.train.experiment import build_model
    from olmo_flex_ext.train.trainable import set_trainable_experts

    model = tiny_flex([48, 16]).build(init_device="cpu")
    with pytest.raises(Exception, match="holds the rows of experts"):  # not split
        _attach(TrainableExpertsCallback(experts=[1]), model, None)
    set_trainable_experts(model, [1])
    with pytest.raises(Exception, match="other parameters are trainable"):
        _attach(TrainableExpertsCallback(experts=[1]), model, None)
    config = _experiment(tmp_path)
    model = build_model(config).to_empty(device="cpu")
    with pytest.raises(Exception, match="weight_decay=0.1"):
        _attach(
            TrainableExpertsCallback(experts=[1]),
            model,
            AdamWConfig(lr=1e-3, weight_decay=0.1).build(model),
        )
    with pytest.raises(Exception, match="has 2 experts"):
        set_trainable_experts(tiny_flex([48, 16]).build(init_device="meta"), [2])
    model.blocks["0"].feed_forward_moe.experts.mlp.w1_frozen.requires_grad_(True)
    with pytest.raises(Exception, match="w1_frozen would train"):
        _attach(TrainableExpertsCallback(experts=[1]), model, None)
    model.blocks["0"].feed_forward_moe.experts.mlp.w1_frozen.requires_grad_(False)
    model.blocks["0"].feed_forward_moe.experts.mlp.w2.requires_grad_(False)
    with pytest.raises(Exception, match="w2 is frozen but holds the trainable experts' rows"):
        _attach(TrainableExpertsCallback(experts=[1]), model, None)
