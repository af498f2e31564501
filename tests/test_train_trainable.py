"""Expert-only training: what with_expert_training freezes, gradient row masking, refusals."""

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


def test_freezes_all_but_shared_moe_tensors_and_masks_rows(tmp_path):
    config = _experiment(tmp_path)
    model = config.model.build(init_device="cpu")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.feed_forward_moe.{t}" for i in range(2) for t in
                         ("experts.mlp.w1", "experts.mlp.w2", "experts.mlp.w3", "router.weight")}
    optim = config.train_module.optim.build(model)
    assert all(g["weight_decay"] == 0.0 for g in optim.param_groups)  # overridden for these
    callback = config.trainer.callbacks["trainable_experts"]
    _attach(callback, model, optim)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    callback.pre_optim_step()
    mlp = model.blocks["0"].feed_forward_moe.experts.mlp
    assert mlp.w1.grad[:48].eq(0).all() and mlp.w1.grad[48:].eq(1).all()
    router = model.blocks["1"].feed_forward_moe.router.weight.grad
    assert router[:64].eq(0).all() and router[64:].eq(1).all()


def test_refuses_setups_that_would_move_frozen_rows(tmp_path):
    model = tiny_flex([48, 16]).build(init_device="cpu")
    with pytest.raises(Exception, match="other parameters are trainable"):
        _attach(TrainableExpertsCallback(experts=[1]), model, None)
    model = _experiment(tmp_path).model.build(init_device="cpu")
    with pytest.raises(Exception, match="weight_decay=0.1"):
        _attach(TrainableExpertsCallback(experts=[1]), model,
                AdamWConfig(lr=1e-3, weight_decay=0.1).build(model))
    with pytest.raises(Exception, match="has 2 experts"):
        _attach(TrainableExpertsCallback(experts=[2]), model, None)
    model.blocks["0"].feed_forward_moe.experts.mlp.w2.requires_grad_(False)
    with pytest.raises(Exception, match="w2 is frozen but holds the trainable experts' rows"):
        _attach(TrainableExpertsCallback(experts=[1]), model, None)
