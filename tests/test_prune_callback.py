"""The pruning callback in a real training run: 2 ranks under FSDP on CPU, then a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from prune_helpers import tiny_checkpoint

from olmo_flex_ext.checkpoint import (
    iter_tensors,
    load_model,
    read_model_config,
    resolve_checkpoint,
    tensor_shapes,
)
from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.models import expert_widths_per_layer
from olmo_flex_ext.prune.allocate import keep_indices
from olmo_flex_ext.prune.importance import compute_importance
from olmo_flex_ext.prune.scores import ImportanceScores
from olmo_flex_ext.prune.slicing import prune_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "train_configs" / "tiny_flex_prune.py")


def launch(tmp: Path, steps: int, teacher: Path, ranks: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "olmo_flex_ext.launch",
        CONFIG,
        f"--trainer.save_folder={tmp / 'run'}",
        f"--trainer.max_duration.value={steps}",
        "--trainer.callbacks.checkpointer.save_interval=2",
        "--trainer.callbacks.wandb.enabled=false",
        f"--trainer.callbacks.prune.teacher={teacher}",
        "--trainer.callbacks.prune.num_seqs=8",
        "--trainer.callbacks.prune.batch_size=2",
        "--trainer.callbacks.prune.compare_num_seqs=4",
        # lr far below float32 resolution: the weights stay exactly what the callback loaded
        "--train_module.optim.lr=1e-30",
    ]
    env = dict(os.environ, OLMO_FLEX_DATA_ROOT=str(tmp / "data"), PYTHONPATH=str(REPO))
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def weights(path) -> dict:
    return dict(iter_tensors(path, [k for k in tensor_shapes(path)]))


@pytest.mark.slow
def test_callback_prunes_into_fsdp_student_and_resume_does_not_prune_again(tmp_path):
    teacher = tiny_checkpoint(tmp_path / "teacher", (256, 96), seed=2, d_model=64, n_heads=4)
    out = launch(tmp_path, 2, teacher)
    assert out.returncode == 0, out.stderr[-4000:]
    prune_dir = tmp_path / "run" / "prune"

    # scores from 2 ranks (each its share, then summed) == one process over all sequences
    calibration = ensure_synthetic_tokens(tmp_path / "data" / "synthetic", vocab_size=512)
    single = compute_importance(
        load_model(teacher),
        TokenFiles(calibration, np.uint16),
        seq_len=128,
        num_seqs=8,
        progress=False,
    )
    saved = ImportanceScores.load(prune_dir / "importance.safetensors")
    for a, b in zip(saved.scores, single.scores):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=0)

    # the pruned start is the teacher pruned offline with those scores, widths from the config
    start = prune_dir / "start"
    assert expert_widths_per_layer(read_model_config(start)) == [[256, 48], [256, 48]]
    prune_checkpoint(teacher, tmp_path / "offline", keep_indices(saved, [[256, 48]] * 2))
    start_w = weights(start)
    for name, t in weights(tmp_path / "offline").items():
        assert torch.equal(start_w[name], t), name
    # ... and it is what the FSDP-sharded student held before step 1 (lr 0 keeps it)
    step2 = resolve_checkpoint(tmp_path / "run")
    assert step2.name == "step2"
    for step in (tmp_path / "run" / "step0", step2):  # the pre-train checkpoint holds it already
        for name, t in weights(step).items():
            assert torch.equal(start_w[name], t), (step, name)
    allocation = json.loads((prune_dir / "allocation.json").read_text())
    assert [r["width"] for r in allocation] == [48, 48]
    assert all(0 <= r["calibration_overlap"] <= 1 for r in allocation)

    # resume: the teacher is gone, the callback must not touch it, the run goes on
    mtime = (start / "config.json").stat().st_mtime_ns
    out = launch(tmp_path, 4, tmp_path / "no-such-teacher")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "nothing to prune" in out.stdout + out.stderr
    assert resolve_checkpoint(tmp_path / "run").name == "step4"
    assert (start / "config.json").stat().st_mtime_ns == mtime
