"""Distillation training through the train config: data path, 1 vs 2 FSDP ranks, expert-only
training leaving frozen weights bitwise unchanged, online teacher, and KD beating CE."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distill_helpers import (
    PRUNED_WIDTH,
    SEQ,
    TEACHER_WIDTHS,
    held_out_kl,
    prune_first,
    train_teacher,
)

from olmo_flex_ext import load_model
from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.distill.data import KDDataLoaderConfig, TopKFSLDatasetConfig
from olmo_flex_ext.distill.generate import generate_store, teacher_topk
from olmo_flex_ext.launch import main as launch
from olmo_flex_ext.recipes import TINY_TOKENIZER

REPO = Path(__file__).resolve().parents[1]
K = 32

WRAPPER = """
from olmo_core.train.callbacks import MetricSaverCallback
from olmo_flex_ext.train.experiment import load_experiment

def build_config():
    config = load_experiment({config!r}, {overrides!r})
    config.trainer.callbacks["metrics"] = MetricSaverCallback(
        save_interval=1, metrics_to_capture=["train/*"]
    )
    return config
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    data = ensure_synthetic_tokens(
        root / "data", vocab_size=512, num_files=2, tokens_per_file=16384
    )
    teacher = train_teacher(root / "teacher", data, steps=120)
    student = prune_first(teacher, root / "student")
    store = generate_store(
        teacher,
        data,
        seq_len=SEQ,
        k=K,
        out=root / "store",
        tokenizer=TINY_TOKENIZER,
        progress=False,
    )
    overrides = [
        f"--load_path={student}",
        f"--model.block.feed_forward_moe.expert_widths=[{TEACHER_WIDTHS[0]},{PRUNED_WIDTH}]",
        f"--dataset.topk_store={store.path}",
        f"--train_module.teacher_path={teacher}",
        f"--dataset.paths=[{','.join(data)}]",
        f"--dataset.sequence_length={SEQ}",
        f"--train_module.max_sequence_length={SEQ}",
        f"--train_module.rank_microbatch_size={4 * SEQ}",
        f"--data_loader.global_batch_size={8 * SEQ}",
        "--trainer.callbacks.wandb.enabled=false",
        "--trainer.metrics_collect_interval=1",
        "--trainer.save_overwrite=true",  # the metric saver writes the last step twice
    ]
    wrapper = root / "kd_config.py"
    wrapper.write_text(
        WRAPPER.format(
            config=str(REPO / "train_configs" / "tiny_flex_math_kd.py"), overrides=overrides
        )
    )
    return dict(
        root=root, data=data, teacher=teacher, student=student, store=store, wrapper=wrapper
    )


def _run(env, name, steps, *extra):
    run = env["root"] / name
    launch(
        [
            str(env["wrapper"]),
            f"--trainer.save_folder={run}",
            f"--dataset.work_dir={run}/dataset-cache",
            f"--trainer.max_duration.value={steps}",
            f"--trainer.callbacks.checkpointer.save_interval={steps}",
            *extra,
        ]
    )
    return run


def _metric(run, step, name):
    return json.loads((run / f"metrics_step{step}.json").read_text())[name]


def test_dataset_items_carry_the_teachers_topk(env):
    config = TopKFSLDatasetConfig(
        paths=env["data"],
        sequence_length=SEQ,
        tokenizer=TINY_TOKENIZER,
        topk_store=str(env["store"].path),
    )
    dataset = config.build()
    teacher = load_model(str(env["teacher"]))
    for index in (0, 5, len(dataset) // 2 + 3, len(dataset) - 1):  # both files
        item = dataset[index]
        want_ids, _ = teacher_topk(teacher, item["input_ids"][None].long(), K)
        assert torch.equal(item["teacher_ids"], want_ids[0])
        assert item["teacher_logprobs"].shape == (SEQ, K)
    loader = KDDataLoaderConfig(global_batch_size=4 * SEQ, seed=0).build(dataset)
    loader.reshuffle(epoch=1)
    batch = next(iter(loader))
    assert batch["teacher_ids"].shape == (4, SEQ, K)
    assert batch["teacher_logprobs"].dtype == torch.float32
    loader.reset()


def _check_expert_only(run_step, student):
    """Everything but expert 1's rows and router row is bitwise the student's."""
    before = load_model(str(student)).state_dict()
    after = load_model(str(run_step)).state_dict()
    public, d_model = TEACHER_WIDTHS[0], 64
    changed = []
    for name, b in before.items():
        a = after[name]
        if name.endswith(("mlp.w1", "mlp.w2", "mlp.w3")):
            assert torch.equal(a[:public], b[:public]), name
            changed.append(not torch.equal(a[public:], b[public:]))
        elif name.endswith("router.weight"):
            assert torch.equal(a[:d_model], b[:d_model]), name
            changed.append(not torch.equal(a[d_model:], b[d_model:]))
        else:
            assert torch.equal(a, b), name
    assert all(changed)


def test_two_fsdp_ranks_match_one_and_expert_only_is_exact(env):
    single = _run(env, "single", 10)
    run = env["root"] / "fsdp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "olmo_flex_ext.launch",
        str(env["wrapper"]),
        f"--trainer.save_folder={run}",
        f"--dataset.work_dir={run}/dataset-cache",
        "--trainer.max_duration.value=10",
        "--trainer.callbacks.checkpointer.save_interval=10",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = [
        (_metric(single, s, "train/KD loss"), _metric(run, s, "train/KD loss"))
        for s in range(1, 11)
    ]
    assert abs(losses[0][0] - losses[0][1]) < 1e-5
    assert max(abs(a - b) for a, b in losses) < 1e-3
    assert losses[-1][0] < losses[0][0]
    _check_expert_only(single / "step10", env["student"])
    _check_expert_only(run / "step10", env["student"])


def test_bf16_params_on_two_fsdp_ranks_track_float32(env):
    """The 7B precision settings (bfloat16 parameters in compute, float32 gradient reduction,
    float32 master weights and optimizer state, KD loss in float32 over bfloat16 logits) on 2
    gloo ranks: the loss follows the float32 run's."""
    fp32 = env["root"] / "single"
    if not (fp32 / "step10").exists():
        fp32 = _run(env, "single", 10)
    run = env["root"] / "bf16"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "olmo_flex_ext.launch", str(env["wrapper"]), f"--trainer.save_folder={run}",
           f"--dataset.work_dir={run}/dataset-cache", "--trainer.max_duration.value=10",
           "--trainer.callbacks.checkpointer.save_interval=10",
           "--train_module.dp_config.param_dtype=bfloat16",
           "--train_module.dp_config.reduce_dtype=float32"]  # fmt: skip
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    pairs = [
        (_metric(fp32, s, "train/KD loss"), _metric(run, s, "train/KD loss")) for s in range(1, 11)
    ]
    assert all(abs(a - b) <= 0.02 * a for a, b in pairs), pairs  # bfloat16 rounding, not drift
    assert pairs[-1][1] < 0.9 * pairs[0][1]
    assert load_model(str(run / "step10")).blocks["0"].attention.w_q.weight.dtype == torch.float32


def test_online_teacher_matches_the_store(env):
    store = _run(env, "store_mode", 2)
    online = _run(
        env,
        "online_mode",
        2,
        "--train_module.online_teacher=true",
        f"--train_module.teacher_top_k={K}",
    )
    for step in (1, 2):  # the store's log-probs are bfloat16: equal up to that rounding
        a, b = _metric(store, step, "train/KD loss"), _metric(online, step, "train/KD loss")
        assert abs(a - b) < 2e-2 * abs(b), (step, a, b)


@pytest.mark.slow
def test_kd_beats_pruned_and_ce_training(env):
    steps = 200
    kd = _run(env, "kd", steps, "--trainer.metrics_collect_interval=50")
    ce = _run(
        env,
        "ce",
        steps,
        "--trainer.metrics_collect_interval=50",
        "--train_module.kd.kd_weight=0",
        "--train_module.kd.ce_weight=1",
    )
    pruned_kl = held_out_kl(env["student"], env["teacher"], env["data"])
    kd_kl = held_out_kl(kd / f"step{steps}", env["teacher"], env["data"])
    ce_kl = held_out_kl(ce / f"step{steps}", env["teacher"], env["data"])
    print(f"KL to teacher: pruned {pruned_kl:.4f}, CE-trained {ce_kl:.4f}, KD {kd_kl:.4f}")
    assert kd_kl < 0.5 * pruned_kl
    assert kd_kl < 0.7 * ce_kl
    assert np.isfinite([pruned_kl, kd_kl, ce_kl]).all()
