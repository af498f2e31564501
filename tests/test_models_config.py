"""Model and experiment configs: round trips, dotted overrides, parameter and FLOP counts, the 7B
totals, and the errors a user gets for bad widths or bad train config files."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.feed_forward import FeedForwardConfig
from olmo_core.nn.moe import MoERouterConfig
from olmo_core.nn.transformer import TransformerConfig

from olmo_flex_ext import launch
from olmo_flex_ext.models import (
    expert_widths_per_layer,
    flex_olmo_2x7b,
    get_model_config,
    moe_configs,
    tiny_flex,
    with_expert_widths,
)
from olmo_flex_ext.nn.moe import VariableMoEConfig
from olmo_flex_ext.train.experiment import ExperimentConfig, load_experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "train_configs" / "tiny_flex.py")
WIDTHS_KEY = "model.block.feed_forward_moe.expert_widths"


@pytest.fixture(scope="module", autouse=True)
def data_root(tmp_path_factory):
    """The tiny config's synthetic tokens, made once for this module in a temp dir."""
    old = os.environ.get("OLMO_FLEX_DATA_ROOT")
    os.environ["OLMO_FLEX_DATA_ROOT"] = str(tmp_path_factory.mktemp("data"))
    yield
    if old is None:
        del os.environ["OLMO_FLEX_DATA_ROOT"]
    else:
        os.environ["OLMO_FLEX_DATA_ROOT"] = old


def built_widths(config: TransformerConfig):
    model = config.build(init_device="meta")
    return [list(b.feed_forward_moe.expert_widths) for b in model.blocks.values()]


# ---- round trips and overrides ------------------------------------------------------------


def test_model_config_round_trips_with_per_layer_widths():
    config = tiny_flex([[256, 96], [128, 64], [256, 96]], n_layers=3)
    assert set(config.block_overrides) == {1}
    again = TransformerConfig.from_dict(config.as_config_dict())
    assert again == config
    assert isinstance(again.block_overrides[1].feed_forward_moe, VariableMoEConfig)
    assert built_widths(again) == [[256, 96], [128, 64], [256, 96]]


def test_model_config_merge_overrides_widths():
    config = tiny_flex([256, 96])
    merged = config.merge(["--block.feed_forward_moe.expert_widths=[100,7]"])
    assert built_widths(merged) == [[100, 7], [100, 7]]
    assert merged.block.feed_forward_moe.hidden_size == 100
    per_layer = with_expert_widths(config, [[256, 96], [64, 32]])
    merged = per_layer.merge(["--block.feed_forward_moe.expert_widths=[100,7]"])
    assert built_widths(merged) == [[100, 7], [64, 32]]  # layer 1 keeps its override


def test_experiment_config_round_trips_and_takes_width_overrides(tmp_path):
    config = load_experiment(TINY, [f"--{WIDTHS_KEY}=[48,16]"])
    assert expert_widths_per_layer(config.model) == [[48, 16], [48, 16]]
    assert ExperimentConfig.from_dict(config.as_config_dict()) == config

    # per-layer widths through block_overrides, addressed by layer index on the command line
    cfg_file = tmp_path / "per_layer.py"
    cfg_file.write_text(
        f"import runpy\nfrom olmo_flex_ext.models import with_expert_widths\n"
        f"def build_config():\n"
        f"    c = runpy.run_path({TINY!r})['build_config']()\n"
        f"    c.model = with_expert_widths(c.model, [[256, 96], [128, 64]])\n"
        f"    return c\n"
    )
    config = load_experiment(
        str(cfg_file),
        [
            "--model.block_overrides.1.feed_forward_moe.expert_widths=[33,17]",
            f"--{WIDTHS_KEY}=[40,8]",
        ],
    )
    assert expert_widths_per_layer(config.model) == [[40, 8], [33, 17]]
    again = ExperimentConfig.from_dict(config.as_config_dict())
    assert again == config and built_widths(again.model) == [[40, 8], [33, 17]]


# ---- counts -------------------------------------------------------------------------------


def closed_form_params(d, vocab, per_layer, top_k=None):
    """Embeddings + LM head (+ its norm) + per layer: q/k/v/o, q/k norms, 2 block norms, router,
    3 expert matrices over the summed widths (or the top_k widest for active params)."""
    total = 2 * vocab * d + d
    for widths in per_layer:
        used = sorted(widths, reverse=True)[:top_k] if top_k else widths
        total += 4 * d * d + 2 * d + 2 * d + len(widths) * d + 3 * d * sum(used)
    return total


@pytest.mark.parametrize(
    "widths,top_k",
    [([256, 96], None), ([64, 32, 16], 1), ([[40, 24, 8], [16, 16, 100]], 2), ([9, 13, 5, 7], 3)],
)
def test_param_and_flop_counts(widths, top_k):
    config = tiny_flex(widths, top_k=top_k)
    per_layer = expert_widths_per_layer(config)
    k = top_k or len(per_layer[0])
    model = config.build(init_device="meta")
    counted = sum(p.numel() for p in model.parameters())
    assert config.num_params == counted == closed_form_params(64, 512, per_layer)
    assert config.num_active_params == closed_form_params(64, 512, per_layer, k)

    seq = 128
    expected = 6 * (512 * 64 + 64)  # LM head
    for block, widths_l in zip(model.blocks.values(), per_layer):
        n = len(widths_l)
        expected += block.attention.num_flops_per_token(seq)
        expected += 6 * n * 64 + int(3 * 64 * sum(widths_l) * k / n) * 6
        if k == n:  # every token visits every expert: a dense SwiGLU of the summed width + router
            dense = FeedForwardConfig(hidden_size=sum(widths_l), bias=False).build(64)
            assert block.feed_forward_moe.num_flops_per_token(seq) == (
                dense.num_flops_per_token(seq) + 6 * n * 64
            )
    assert model.num_flops_per_token(seq) == expected


@pytest.mark.parametrize(
    "domain,billions", [(11008, 11.63), (8192, 10.52), (5504, 9.46), (2048, 8.10)]
)
def test_7b_totals(domain, billions):
    config = flex_olmo_2x7b(domain)
    assert abs(config.num_params / 1e9 - billions) / billions < 0.005
    per_layer = [[11008, domain]] * 32
    assert config.num_params == closed_form_params(4096, 100352, per_layer)
    assert get_model_config(f"flex-2x7b-{domain}").num_params == config.num_params


def test_7b_equal_widths_match_olmo_core_count():
    stock = TransformerConfig.llama_like_moe(
        d_model=4096,
        n_layers=32,
        n_heads=32,
        num_experts=2,
        top_k=2,
        expert_hidden_size=11008,
        reordered_norm=True,
        qk_norm=True,
        rope_theta=500_000,
        layer_norm_eps=1e-6,
        vocab_size=100352,
    )
    assert flex_olmo_2x7b(11008).num_params == stock.num_params
    assert flex_olmo_2x7b(11008).num_active_params == stock.num_active_params


def test_dry_run_prints_config_and_9_46b(capsys):
    assert launch.main([str(ROOT / "train_configs" / "flex_math_5504.py"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "total params:  9.46B" in out and "[11008, 5504]" in out
    assert "VariableMoEConfig" in out


# ---- errors -------------------------------------------------------------------------------

BAD_WIDTHS = [
    ("[]", 2, "expert_widths is empty"),
    ("[0,96]", 2, "not a positive integer"),
    ("[-5,96]", 2, "not a positive integer"),
    ("[256,96,32]", 2, "has 3 entries but num_experts=2"),
]


@pytest.mark.parametrize("widths,top_k,message", BAD_WIDTHS + [("[256,96]", 3, "router.top_k=3")])
def test_bad_widths_fail_at_construction(widths, top_k, message):
    widths = yaml.safe_load(widths)
    pattern = re.escape(message)
    with pytest.raises(OLMoConfigurationError, match=pattern):
        VariableMoEConfig(num_experts=2, expert_widths=widths, router=MoERouterConfig(top_k=top_k))
    if len(widths) == 2:  # the model functions check the same way
        with pytest.raises(OLMoConfigurationError, match=pattern):
            tiny_flex(widths, top_k=top_k)


def test_per_layer_widths_must_cover_layers_and_agree_on_expert_count():
    with pytest.raises(OLMoConfigurationError, match="cover 1 layers but the model has 2"):
        tiny_flex([[256, 96]])
    with pytest.raises(OLMoConfigurationError, match="same number of experts"):
        tiny_flex([[256, 96], [64, 32, 16]])


@pytest.mark.parametrize(
    "override,message",
    [(f"--{WIDTHS_KEY}={w}", m) for w, _, m in BAD_WIDTHS]
    + [("--model.block.feed_forward_moe.router.top_k=3", "router.top_k=3 must be between 1")]
    + [("--model.blok.x=1", "has no field 'blok'")],
)
def test_bad_override_on_launcher_command_line(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.main([TINY, override, "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_missing_config_and_missing_build_config(tmp_path, capsys):
    for path, message in [
        (tmp_path / "nope.py", "does not exist"),
        (tmp_path / "empty.py", "has no build_config()"),
    ]:
        if path.name == "empty.py":
            path.write_text("x = 1\n")
        with pytest.raises(SystemExit) as exit_info:
            launch.main([str(path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_launcher_process_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "olmo_flex_ext.launch", str(tmp_path / "nope.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: train config")
    assert "Traceback" not in out.stderr


def test_two_ranks_without_data_parallelism_are_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "olmo_flex_ext.launch", TINY, "--train_module.dp_config=null"]
    cmd += [f"--trainer.save_folder={tmp_path / 'run'}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0
    assert "error: 2 ranks but train_module.dp_config is None" in out.stderr
    assert not (tmp_path / "run").exists()


def test_batch_that_ranks_cannot_split_is_refused_before_building(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "6")  # 16 sequences per step do not split over 6 ranks
    with pytest.raises(SystemExit) as exit_info:
        launch.main([str(ROOT / "train_configs" / "flex_math_5504.py"), "--dry-run"])
    assert exit_info.value.code == 2
    assert "multiple of 24,576" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launch.main([str(ROOT / "train_configs" / "flex_math_5504.py"), "--dry-run"]) == 0


def test_code_expert_config_trains_only_the_new_expert_from_the_upcycled_model(capsys):
    from olmo_flex_ext.recipes import flex_expert_7b
    from olmo_flex_ext.train.trainable import ROUTER_PARAMS

    assert launch.main([str(ROOT / "train_configs" / "flex_code_expert.py"), "--dry-run"]) == 0
    assert "[11008, 11008]" in capsys.readouterr().out
    config = flex_expert_7b("code")
    assert config.load_path.endswith("checkpoints/upcycled-code")
    assert all(m.router.expert_bias for m in moe_configs(config.model))
    assert ROUTER_PARAMS in config.freeze_params  # the domain router stays fixed
    callback = config.trainer.callbacks["trainable_experts"]
    assert callback.experts == [1] and not callback.train_router
    trained = flex_expert_7b("code", train_router=True)  # FlexOlmo's variant
    assert ROUTER_PARAMS not in trained.freeze_params
    assert trained.trainer.callbacks["trainable_experts"].train_router
