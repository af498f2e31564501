"""Import a FlexOlmo, train it through the launcher, export it, and resume the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import (
    hf_flex,
    hf_logits,
    load_hf,
    max_diff,
    our_logits,
    tokens,
)

from olmo_flex_ext import load_model
from olmo_flex_ext.hf import export_hf, import_hf

CONFIG = Path(__file__).resolve().parents[1] / "train_configs" / "tiny_from_checkpoint.py"


def _launch(tmp_path, run, *overrides):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    argv = [
        sys.executable,
        "-m",
        "olmo_flex_ext.launch",
        str(CONFIG),
        f"--trainer.save_folder={run}",
        "--trainer.callbacks.checkpointer.save_interval=3",
        "--trainer.callbacks.wandb.enabled=false",
        *overrides,
    ]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_import_train_export_resume(tmp_path):
    hf_flex(tmp_path / "hf", vocab=512, d_model=64, width=64, experts=2, top_k=2)
    import_hf(tmp_path / "hf", tmp_path / "init")
    run = tmp_path / "run"

    log = _launch(
        tmp_path, run, f"--load_path={tmp_path / 'init'}", "--trainer.max_duration.value=3"
    )
    assert "loading initial weights" in log
    init, trained = load_model(tmp_path / "init"), load_model(run / "step3")
    for name, before in init.state_dict().items():
        after = trained.state_dict()[name]
        change = ((after - before).norm() / before.norm()).item()
        assert 0 < change < 0.1, (name, change)  # trained a little from the imported weights

    export_hf(run / "step3", tmp_path / "exported")
    hf = load_hf(tmp_path / "exported")
    assert hf.config.eos_token_id == 0 and hf.config.pad_token_id == 1  # the run's tokenizer
    x = tokens(vocab=512)
    assert max_diff(hf_logits(hf, x), our_logits(trained, x)) < 1e-5

    # Same run folder: it resumes from step 3 (load_path is not even read) and trains step 4.
    log = _launch(
        tmp_path, run, f"--load_path={tmp_path / 'missing'}", "--trainer.max_duration.value=4"
    )
    assert "resume training from step 3" in log and "loading initial weights" not in log
    resumed = load_model(run / "step4")
    assert not torch.equal(resumed.embeddings.weight, trained.embeddings.weight)
