"""The CPU twin of the 7B math runs, end to end with the documented defaults: a teacher at
runs/tiny_flex -> ``olmo-flex logprobs`` -> tiny_flex_math_kd.py (pruning callback, KD from the
top-k store, expert-only) -> resume."""

from pathlib import Path

import pytest
import torch
from prune_helpers import tiny_checkpoint

from olmo_flex_ext.checkpoint import iter_tensors, read_model_config, tensor_shapes
from olmo_flex_ext.cli import main as cli
from olmo_flex_ext.launch import main as launch
from olmo_flex_ext.models import expert_widths_per_layer
from olmo_flex_ext.prune.scores import ImportanceScores

CONFIG = str(Path(__file__).resolve().parents[1] / "train_configs" / "tiny_flex_math_kd.py")
PUBLIC, WIDTH = 256, 32


def _weights(path) -> dict:
    return dict(iter_tensors(path, list(tensor_shapes(path))))


def _run(steps: int, *extra: str) -> None:
    assert (
        launch(
            [
                CONFIG,
                f"--trainer.max_duration.value={steps}",
                "--trainer.callbacks.checkpointer.save_interval=2",
                "--trainer.callbacks.wandb.enabled=false",
                "--trainer.callbacks.prune.num_seqs=16",
                *extra,
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_tiny_prune_then_distil_from_store_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's default paths are relative: runs/...
    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(tmp_path / "runs" / "data"))
    teacher = tiny_checkpoint(
        tmp_path / "runs" / "tiny_flex", (PUBLIC, 96), seed=2, d_model=64, n_heads=4
    )
    run = tmp_path / "runs" / "tiny_flex_math_kd"
    from olmo_flex_ext.recipes import tiny_data

    tiny_data()  # the synthetic tokens the config trains on
    assert (
        cli(
            [
                "logprobs",
                "runs/tiny_flex",
                "--data",
                "runs/data/synthetic/*.npy",
                "--seq-len",
                "128",
                "--top-k",
                "32",
                "--out",
                "runs/tiny_flex_math_kd/store",
            ]
        )
        == 0
    )

    _run(4)
    assert {p.name for p in run.glob("step*")} == {"step0", "step2", "step4"}
    for step in ("step0", "step4"):
        assert expert_widths_per_layer(read_model_config(run / step)) == [[PUBLIC, WIDTH]] * 2

    # the student before step 1 is the teacher with each expert 1 cut to its 32 top-scoring
    # neurons (in their original order), computed here from the scores by hand
    scores = ImportanceScores.load(run / "prune" / "importance.safetensors")
    teacher_w, step0, step4 = _weights(teacher), _weights(run / "step0"), _weights(run / "step4")
    for name, t in teacher_w.items():
        if ".experts.mlp." in name:
            layer = int(name.split(".")[1])
            keep = torch.topk(scores.scores[layer][1], WIDTH).indices.sort().values
            t = torch.cat([t[:PUBLIC], t[PUBLIC:][keep]])
        assert torch.equal(step0[name], t), name
    # expert-only distillation: expert 1's rows and router row train, everything else is bitwise kept
    for name, before in step0.items():
        after = step4[name]
        if ".experts.mlp." in name:
            assert torch.equal(after[:PUBLIC], before[:PUBLIC]), name
            assert not torch.equal(after[PUBLIC:], before[PUBLIC:]), name
        elif name.endswith("router.weight"):
            assert torch.equal(after[:64], before[:64]) and not torch.equal(after[64:], before[64:])
        else:
            assert torch.equal(after, before), name

    # resume: the pruning teacher is gone, so pruning again would fail; the run just goes on
    start = run / "prune" / "start" / "config.json"
    mtime = start.stat().st_mtime_ns
    _run(6, "--trainer.callbacks.prune.teacher=runs/no-such-teacher")
    assert {p.name for p in run.glob("step*")} == {"step0", "step2", "step4", "step6"}
    assert start.stat().st_mtime_ns == mtime
    assert expert_widths_per_layer(read_model_config(run / "step6")) == [[PUBLIC, WIDTH]] * 2
