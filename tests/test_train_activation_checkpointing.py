"""Activation checkpointing (OLMo-core's ``ac_config``) with the variable-width MoE: every mode
OLMo-core allows for MoE blocks gives the same loss, gradients and router metrics as no
checkpointing (float32, CPU), and the project's optimizer group overrides and checks still match
parameters renamed by ``_checkpoint_wrapped_module``. (``budget`` needs compile: see
test_train_compile.py.)"""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer.config import TransformerActivationCheckpointingMode as Mode
from olmo_core.optim import OptimGroupOverride
from olmo_core.train.train_module import TransformerActivationCheckpointingConfig

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.train.trainable import set_trainable_experts, tolerate_wrappers

MODULES = [
    "blocks.*.attention",
    "blocks.*.feed_forward_moe.experts",
    "blocks.*.feed_forward_moe.router",
]
MODES = [
    (Mode.selected_ops, {}),
    (Mode.selected_modules, {"modules": MODULES[:2]}),
    (Mode.selected_modules, {"modules": MODULES[2:]}),
]


def model(split: bool = False):
    torch.manual_seed(0)
    m = tiny_flex([48, 16]).build(init_device="cpu")
    m.init_weights(
        device=torch.device("cpu"), max_seq_len=32
    )  # warms the RoPE cache, as a run does
    if split:
        set_trainable_experts(m, [1])
    return m.train()


def step(m, x):
    """CE loss, gradients by canonical name, router metrics of one forward + backward."""
    m.zero_grad(set_to_none=True)
    logits = m(x)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in m.named_parameters()
             if p.grad is not None}  # fmt: skip
    metrics = {k: v[0].item() for k, v in m.compute_auxiliary_metrics(reset=True).items()}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("split", [False, True], ids=["all-experts", "expert-only"])
@pytest.mark.parametrize("mode,settings", MODES, ids=[f"{m}-{s}" for m, s in MODES])
def test_modes_give_the_same_loss_gradients_and_metrics(mode, settings, split):
    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    plain = model(split)
    wrapped = copy.deepcopy(plain)
    wrapped.apply_activation_checkpointing(mode, **settings)
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    (loss, grads, metrics), (ac_loss, ac_grads, ac_metrics) = step(plain, x), step(wrapped, x)
    assert torch.equal(loss, ac_loss)
    assert grads.keys() == ac_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(ac_grads[name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert metrics == pytest.approx(ac_metrics, rel=1e-6)  # a recomputed router counts once


@pytest.mark.parametrize(
    "mode,settings", [(Mode.full, {}), (Mode.selected_blocks, {"block_interval": 2})]
)
def test_whole_block_modes_are_refused_by_olmo_core(mode, settings):
    with pytest.raises(OLMoConfigurationError, match="MoE blocks"):
        model().apply_activation_checkpointing(mode, **settings)


def test_group_overrides_and_checks_match_wrapped_parameters():
    from olmo_flex_ext.recipes import TINY_TOKENIZER, flex_experiment, with_expert_training
    from olmo_flex_ext.train.experiment import build_model
    from olmo_flex_ext.train.trainable import ROUTER_ONLY_FREEZE, RouterOnlyCheck

    config = flex_experiment(
        model=tiny_flex([48, 16]), data_paths=["unused.npy"], tokenizer=TINY_TOKENIZER,
        save_folder="unused", sequence_length=16, global_batch_tokens=32, microbatch_tokens=32,
        max_duration=None, lr=1e-3, weight_decay=0.1, wandb_project=None,
    )  # fmt: skip
    config = with_expert_training(config, experts=[1])
    config.model.freeze_params = config.freeze_params
    w1 = "blocks.*.feed_forward_moe.experts.mlp.w1"
    optim = config.train_module.optim
    optim.group_overrides.append(
        OptimGroupOverride(params=[tolerate_wrappers(w1)], opts={"lr": 0.5})
    )
    tm = config.train_module
    tm.dp_config = None
    tm.ac_config = TransformerActivationCheckpointingConfig(
        mode=Mode.selected_modules, modules=MODULES
    )

    built = tm.build(build_model(config))  # OLMo-core raises if an override matches nothing
    names = {id(p): n for n, p in built.model.named_parameters()}
    groups = [sorted(names[id(p)] for p in g["params"]) for g in built.optim.param_groups]
    wrapped = "._checkpoint_wrapped_module"
    assert groups[0] == [f"blocks.{i}.feed_forward_moe.router{wrapped}.weight" for i in (0, 1)]
    assert groups[1] == [f"blocks.{i}.feed_forward_moe.experts{wrapped}.mlp.w1" for i in (0, 1)]
    assert [g["weight_decay"] for g in built.optim.param_groups] == [0.0, 0.1, 0.1]
    callback = config.trainer.callbacks["trainable_experts"]
    callback.trainer = SimpleNamespace(train_module=built)
    callback.post_attach()  # finds the split experts and router rows through the wrappers

    optim.group_overrides[-1] = OptimGroupOverride(params=[w1], opts={"lr": 0.5})
    with pytest.raises(OLMoConfigurationError, match="does not match any parameters"):
        optim.build(built.model)  # the plain pattern misses the wrapped names

    routers_config = tiny_flex([48, 16])
    routers_config.freeze_params = list(ROUTER_ONLY_FREEZE)  # what with_router_training freezes
    routers = routers_config.build(init_device="cpu")
    routers.apply_activation_checkpointing(Mode.selected_modules, modules=MODULES)
    check = RouterOnlyCheck()
    check.trainer = SimpleNamespace(train_module=SimpleNamespace(model=routers))
    check.pre_train()  # only the (wrapped) routers train
