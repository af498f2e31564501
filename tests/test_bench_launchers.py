"""The bench harness and the Beaker / Slurm launchers' dry runs."""

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from bench import time_interleaved

ROOT = Path(__file__).resolve().parents[1]
CONFIG_5504 = "train_configs/flex_math_5504.py"


def test_time_interleaved_rotates_order_after_warmup():
    calls = []
    variants = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    timings = time_interleaved(variants, repeats=3, warmup=1)
    assert calls == list("abc" + "abc" + "bca" + "cab")
    assert all(len(t.seconds) == 3 for t in timings.values())


def test_moe_bench_runs_small(capsys):
    from bench.moe import run_case

    ratios = run_case([32, 8], 2, tokens=64, d_model=16, repeats=1, warmup=0)
    assert ratios["dense SwiGLU 40"] == 1.0
    assert set(ratios) == {"variable MoE", "dense SwiGLU 40", "padded to widest (32)"}
    assert "top-2 of 2" in capsys.readouterr().out


def load_beaker_launcher():
    pytest.importorskip("gantry", reason="needs the beaker extra: pip install -e '.[beaker]'")
    spec = importlib.util.spec_from_file_location("flex_beaker", ROOT / "launch" / "flex_beaker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_beaker_dry_run_prints_launch_config_and_node_command(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    launcher = load_beaker_launcher()
    argv = [CONFIG_5504, "--save-folder=/weka/b/runs/x", "--weka=b", "--dry-run"]
    with pytest.raises(SystemExit):  # 16 sequences per step do not split over 24 ranks
        launcher.main(argv + ["--nodes=3"])
    assert "multiple of 98,304" in capsys.readouterr().err
    argv += ["--nodes=2"]
    assert launcher.main(argv + ["--data_loader.global_batch_size=65536"]) == 0
    out = capsys.readouterr().out
    assert "BeakerLaunchConfig(" in out and "num_nodes=2" in out and "num_gpus=8" in out
    assert "shared_filesystem=True" in out and "mount='/weka/b'" in out
    assert (
        "each node runs: torchrun --nnodes=$BEAKER_REPLICA_COUNT --node-rank=$BEAKER_REPLICA_RANK"
        in out
    )
    assert (
        "--nproc-per-node=8 --no-python python -m olmo_flex_ext.launch "
        "train_configs/flex_math_5504.py --trainer.save_folder=/weka/b/runs/x "
        "--data_loader.global_batch_size=65536" in out
    )
    assert "total params:  9.46B" in out and "nothing submitted" in out


def test_beaker_refuses_a_save_folder_nodes_do_not_share(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    launcher = load_beaker_launcher()
    with pytest.raises(SystemExit) as exit_info:
        launcher.main([CONFIG_5504, "--save-folder=runs/x", "--dry-run"])
    assert exit_info.value.code == 2
    assert "must be an absolute path" in capsys.readouterr().err


def test_slurm_dry_run_prints_srun_torchrun(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/bash\necho gpu-node-3\necho gpu-node-4\n")
    (fake / "scontrol").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "DRY_RUN": "1",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-node-[3-4]",
    }
    cmd = ["bash", "launch/slurm.sbatch", CONFIG_5504, "--trainer.save_folder=/shared/r"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (
        "would run: srun --kill-on-bad-exit=1 --ntasks-per-node=1 torchrun --nnodes=2 "
        "--nproc-per-node=8 --rdzv-id=4242 --rdzv-backend=c10d "
        "--rdzv-endpoint=gpu-node-3:29500 -m olmo_flex_ext.launch "
        "train_configs/flex_math_5504.py --trainer.save_folder=/shared/r" in out.stdout
    )
    assert "nothing started" in out.stdout

    missing = subprocess.run(
        ["bash", "launch/slurm.sbatch", "train_configs/nope.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
