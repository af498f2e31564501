"""The train configs that prune: the callback is there, the model has the right widths, and the
budget config allocates widths at the parameter count of the 5504 model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from olmo_flex_ext.launch import describe
from olmo_flex_ext.models import expert_widths_per_layer, flex_olmo_2x7b
from olmo_flex_ext.prune.callback import PruneCallback
from olmo_flex_ext.prune.scores import ImportanceScores
from olmo_flex_ext.train.experiment import load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "train_configs"


@pytest.mark.parametrize("width", [8192, 5504, 2048])
def test_flex_math_configs_prune_from_the_teacher(width):
    config = load_experiment(
        str(CONFIGS / f"flex_math_{width}.py"), ["--trainer.callbacks.prune.teacher=/ckpt/teacher"]
    )
    prune = config.trainer.callbacks["prune"]
    assert isinstance(prune, PruneCallback)
    assert prune.teacher == "/ckpt/teacher" and prune.calibration and prune.budget_width is None
    assert config.load_path is None  # the callback, not a pruned checkpoint, gives the weights
    assert expert_widths_per_layer(config.model) == [[11008, width]] * 32


def test_budget_config_allocates_at_the_5504_parameter_count(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    # deeper layers hold more of their importance in the math expert
    scores = ImportanceScores(
        [
            [torch.rand(11008, generator=g), torch.rand(11008, generator=g) ** (1 + i / 8)]
            for i in range(32)
        ],
        {"model_fingerprint": "synthetic"},
    )
    scores.save(tmp_path / "scores.safetensors")
    monkeypatch.setenv("OLMO_FLEX_SCORES", str(tmp_path / "scores.safetensors"))
    config = load_experiment(str(CONFIGS / "flex_math_budget.py"))
    widths = expert_widths_per_layer(config.model)
    math = [w[1] for w in widths]
    assert all(w[0] == 11008 for w in widths)
    assert sum(math) == 32 * 5504 and len(set(math)) > 1
    assert all(w % 128 == 0 and 128 <= w <= 11008 for w in math)
    assert config.model.num_params == flex_olmo_2x7b(5504).num_params
    assert config.trainer.callbacks["prune"].scores == str(tmp_path / "scores.safetensors")
    assert "layers 0" in describe(config) and str(math[-1]) in describe(config)
    # the callback's own check agrees with the widths the config was built with
    assert config.trainer.callbacks["prune"].allocation(scores) == widths
