"""Expert-only training with the frozen experts split off: the same function as the fused layer,
no weight gradient and no optimizer state for frozen rows, the fused checkpoint layout (loadable by
load_model and by a fused model), frozen rows bitwise unchanged and bitwise resume, 1 process and
2 FSDP ranks."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from olmo_flex_ext import load_model
from olmo_flex_ext.nn.moe import variable_moe_config
from olmo_flex_ext.train.experiment import load_experiment, train

ROOT = Path(__file__).resolve().parents[1]
WIDTHS, D = [48, 16], 64
W1 = "blocks.{}.feed_forward_moe.experts.mlp.w1"
CONFIG = """
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import tiny_experiment, with_expert_training

def build_config():
    config = tiny_experiment("frozen", model=tiny_flex([48, 16]), steps=10, lr=1e-2,
                             save_interval=5, warmup_steps=0)
    return with_expert_training(config, experts=[1], train_router=True)
"""
FAST = ["--trainer.metrics_collect_interval=5", "--trainer.callbacks.wandb.enabled=false"]
HARD_STOP_5 = "--trainer.hard_stop={value: 5, unit: steps}"

CASES = [
    ([7, 3], 2, [1]),
    ([5, 11, 2], 3, [1]),
    ([5, 11, 2], 2, [0, 2]),
    ([9, 1, 4, 13], 1, [1, 2]),
]


@pytest.mark.parametrize("widths,top_k,trained", CASES, ids=[str(c) for c in CASES])
def test_split_layer_computes_the_fused_layer(widths, top_k, trained):
    torch.manual_seed(len(widths) + top_k)
    fused = variable_moe_config(widths, top_k).build(16).eval()
    with torch.no_grad():
        fused.router.weight.normal_(0, 0.5)
    split = copy.deepcopy(fused)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    split.experts.mlp.set_trainable_experts(trained)
    mlp, ref = split.experts.mlp, fused.experts.mlp
    frozen = [e for e in range(len(widths)) if e not in trained]
    assert mlp.frozen_experts == frozen and not mlp.w1_frozen.requires_grad

    after = split.state_dict()  # the checkpoint layout: same keys, order and values
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)

    for opt_out in ([], [frozen[0]]):
        split.set_opt_out(opt_out)
        fused.set_opt_out(opt_out)
        x = torch.randn(3, 5, 16, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        out, out_ref = split(x), fused(x_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        g = torch.randn_like(out)
        out.backward(g)
        out_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
        rows = mlp.expert_rows(trained)
        for w in ("w1", "w2", "w3"):
            torch.testing.assert_close(getattr(mlp, w).grad, getattr(ref, w).grad[rows])
            assert getattr(mlp, w + "_frozen").grad is None  # no weight gradient computed
            getattr(mlp, w).grad = getattr(ref, w).grad = None

    reloaded = copy.deepcopy(split)  # a fused state dict loads into the split layer and back
    for p in reloaded.parameters():
        p.data.zero_()
    reloaded.load_state_dict(before)
    assert all(torch.equal(v, before[k]) for k, v in reloaded.state_dict().items())
    assert torch.equal(reloaded.experts.mlp.w1, before["experts.mlp.w1"][rows])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    os.environ["OLMO_FLEX_DATA_ROOT"] = str(root / "data")
    (root / "config.py").write_text(CONFIG)
    return root / "config.py"


def run_in_process(config_file, folder, *extra):
    config = load_experiment(str(config_file), [f"--trainer.save_folder={folder}", *FAST, *extra])
    config.train_module.dp_config = None
    return train(config)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_frozen_rows(step0, later):
    """Expert 0's rows (and router row) bitwise as at step 0, expert 1's changed."""
    a, b = load_model(step0).state_dict(), load_model(later).state_dict()
    for name in a:
        if name.endswith(("mlp.w1", "mlp.w2", "mlp.w3")):
            assert torch.equal(a[name][: WIDTHS[0]], b[name][: WIDTHS[0]]), name
            assert not torch.equal(a[name][WIDTHS[0] :], b[name][WIDTHS[0] :]), name
        elif name.endswith("router.weight"):
            assert torch.equal(a[name][:D], b[name][:D]), name
        else:
            assert torch.equal(a[name], b[name]), name


def test_expert_only_run_keeps_layout_and_frozen_rows_and_resumes_bitwise(config_file, tmp_path):
    full = run_in_process(config_file, tmp_path / "full")
    model, optim = full.train_module.model, full.train_module.optim
    mlp = model.blocks["0"].feed_forward_moe.experts.mlp
    assert tuple(mlp.w1.shape) == (WIDTHS[1], D) and tuple(mlp.w1_frozen.shape) == (WIDTHS[0], D)

    # optimizer state only for the trained rows (and the routers): AdamW keeps 2 tensors each
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * (3 * WIDTHS[1] * D + 2 * D)
    moments = [t for s in optim.state.values() for k, t in s.items() if k.startswith("exp_avg")]
    assert sum(t.numel() for t in moments) == 2 * trainable

    # the checkpoint holds the fused layout, readable by load_model and by a fused model
    meta = FileSystemReader(str(tmp_path / "full/step10/model_and_optim")).read_metadata()
    assert tuple(meta.state_dict_metadata["model." + W1.format(0)].size) == (sum(WIDTHS), D)
    weights = state(model)
    assert weights[W1.format(1)].shape == (sum(WIDTHS), D)
    assert all(torch.equal(v, weights[k]) for k, v in state(load_model(tmp_path / "full")).items())
    check_frozen_rows(tmp_path / "full/step0", tmp_path / "full/step10")

    stopped = run_in_process(config_file, tmp_path / "resumed", HARD_STOP_5)
    assert stopped.global_step == 5
    resumed = run_in_process(config_file, tmp_path / "resumed")
    assert resumed.global_step == 10
    assert all(torch.equal(v, weights[k]) for k, v in state(resumed.train_module.model).items())
    for p, q in zip(model.parameters(), resumed.train_module.model.parameters()):
        if p.requires_grad:
            s, t = optim.state[p], resumed.train_module.optim.state[q]
            assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(
                s["exp_avg_sq"], t["exp_avg_sq"]
            )


def torchrun(config_file, folder, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "olmo_flex_ext.launch", str(config_file), f"--trainer.save_folder={folder}",
           *FAST, *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_fsdp_ranks_keep_frozen_rows_and_resume_bitwise(config_file, tmp_path):
    torchrun(config_file, tmp_path / "full")
    torchrun(config_file, tmp_path / "resumed", HARD_STOP_5)
    torchrun(config_file, tmp_path / "resumed")
    check_frozen_rows(tmp_path / "full/step0", tmp_path / "full/step10")
    full, resumed = state(load_model(tmp_path / "full")), state(load_model(tmp_path / "resumed"))
    assert all(torch.equal(v, full[k]) for k, v in resumed.items())


def test_a_stock_checkpoint_loads_into_split_experts(tmp_path):
    """The stock OLMo-core layout is converted tensor by tensor while it is read; expert weights
    held as row blocks take their rows through their layer."""
    from stock_helpers import save_stock, stock_config, stock_model

    from olmo_flex_ext.checkpoint import load_state_dict, read_model_config
    from olmo_flex_ext.train.trainable import set_trainable_experts

    config = stock_config("default", experts=2, top_k=2, d_model=64, hidden=64, vocab=512)
    path = save_stock(stock_model(config, seed=3), config, tmp_path / "stock")
    split = read_model_config(path).build(init_device="cpu")
    set_trainable_experts(split, [1])
    load_state_dict(split, path)
    reference = load_model(path).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in split.state_dict().items())
    assert torch.equal(split.blocks["0"].feed_forward_moe.experts.mlp.w1_frozen,
                       reference[W1.format(0)][:64])  # fmt: skip
