"""Training the tiny config end to end: bitwise resume, load_model on what a run wrote, 2-rank
FSDP under torchrun against 1 rank, W&B offline."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmo_flex_ext import load_model
from olmo_flex_ext.train.callbacks import read_metrics
from olmo_flex_ext.train.experiment import load_experiment, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "train_configs" / "tiny_flex.py")
STEPS = 10
FAST = [
    f"--trainer.max_duration.value={STEPS}",
    "--trainer.metrics_collect_interval=1",
    "--trainer.callbacks.checkpointer.save_interval=5",
    "--trainer.callbacks.wandb.enabled=false",
]
HARD_STOP_5 = "--trainer.hard_stop={value: 5, unit: steps}"


@pytest.fixture(scope="module", autouse=True)
def data_root(tmp_path_factory):
    """Synthetic token data in a temp dir, shared by every run of this module; one thread per
    process (the model is tiny, and extra threads only contend on a busy machine)."""
    root = tmp_path_factory.mktemp("data")
    saved = {k: os.environ.get(k) for k in ("OLMO_FLEX_DATA_ROOT", "OMP_NUM_THREADS")}
    threads = torch.get_num_threads()
    os.environ.update(OLMO_FLEX_DATA_ROOT=str(root), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_in_process(save_folder, *extra):
    config = load_experiment(CONFIG, [f"--trainer.save_folder={save_folder}", *FAST, *extra])
    config.train_module.dp_config = None  # one process (what check_parallelism does)
    return train(config)


def losses(save_folder):
    """Per-step CE loss from the run folder's metrics.jsonl."""
    metrics = read_metrics(save_folder)
    return [metrics[s]["train/CE loss"] for s in sorted(metrics) if "train/CE loss" in metrics[s]]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 10-step single-process run: (save folder, trained weights, losses)."""
    folder = tmp_path_factory.mktemp("full") / "run"
    trainer = run_in_process(folder)
    assert trainer.global_step == STEPS
    return folder, state(trainer.train_module.model), losses(folder)


def test_run_has_variable_experts_and_checkpoints(full_run):
    folder, weights, run_losses = full_run
    assert weights["blocks.0.feed_forward_moe.experts.mlp.w1"].shape == (256 + 96, 64)
    assert sorted(p.name for p in folder.glob("step*")) == ["step0", "step10", "step5"]
    assert (folder / "step10" / "model_and_optim" / ".metadata").exists()
    assert (folder / "step10" / "config.json").exists()
    assert any((folder / "dataset-cache").iterdir())  # the data index cache follows save_folder
    assert len(run_losses) == STEPS and run_losses[-1] < run_losses[0]


def test_load_model_returns_trained_weights(full_run):
    folder, weights, _ = full_run
    for path in (folder / "step10", folder):  # a trainer stepN/ dir and a run folder (latest)
        model = load_model(path)
        assert not model.training
        assert_bitwise_equal(state(model), weights)


def test_stop_and_resume_is_bitwise_equal_and_rerun_of_finished_run_is_a_no_op(full_run, tmp_path):
    folder = tmp_path / "run"
    first = run_in_process(folder, HARD_STOP_5)
    assert first.global_step == 5
    resumed = run_in_process(folder)  # same command without the hard stop: resumes at step 5
    assert resumed.global_step == STEPS
    assert_bitwise_equal(state(resumed.train_module.model), full_run[1])
    assert_bitwise_equal(state(load_model(folder)), full_run[1])
    again = run_in_process(folder)  # finished: loads step10 and returns without training
    assert again.global_step == STEPS
    assert sorted(p.name for p in folder.glob("step*")) == ["step0", "step10", "step5"]


def torchrun(args, env, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "olmo_flex_ext.launch", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_torchrun_two_ranks_fsdp_matches_one_rank_and_resumes(full_run, tmp_path):
    """The README's torchrun command on 2 gloo ranks with FSDP: stopped at step 5, the same command
    again resumes from the latest checkpoint, and once more is a no-op; losses match the
    single-process run."""
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["train_configs/tiny_flex.py", f"--trainer.save_folder={folder}", *FAST]
    first = torchrun([*args, HARD_STOP_5], env, ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in folder.glob("step*")) == ["step0", "step5"]
    second = torchrun(args, env, ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert f"Loading checkpoint from '{folder}/step5'" in log
    assert "Will resume training from step 5" in log
    assert sorted(p.name for p in folder.glob("step*")) == ["step0", "step10", "step5"]
    third = torchrun(args, env, ROOT)  # finished: exits at once
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already finished (step 10)" in third.stdout + third.stderr

    one, two = full_run[2], losses(folder)
    assert len(two) == STEPS
    assert abs(two[0] - one[0]) < 1e-5, (two[0], one[0])
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-3, (one, two)
    fsdp_weights = state(load_model(folder))
    for k, v in full_run[1].items():
        torch.testing.assert_close(fsdp_weights[k], v, atol=1e-3, rtol=0, msg=k)


def test_wandb_offline_run_exits_zero_and_resume_continues_the_same_run(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    fast = [o for o in FAST if "wandb" not in o and "max_duration" not in o]
    cmd = [sys.executable, "-m", "olmo_flex_ext.launch", CONFIG, f"--trainer.save_folder={folder}"]
    cmd += [*fast, "--trainer.callbacks.wandb.enabled=true"]
    for steps in (2, 3):  # the second run resumes from the first one's step2 checkpoint
        out = subprocess.run(
            cmd + [f"--trainer.max_duration.value={steps}"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted((folder / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(any(r.glob("*.wandb")) for r in runs), runs
    assert len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run id
    shutil.rmtree(folder)
