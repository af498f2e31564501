"""Stock OLMo-core MoE runs in training: --load_path reads a stock checkpoint (converted while
loading), and a stock trainer checkpoint written by OLMo-core's own Trainer, optimizer state
included, continues as a variable-width run bitwise like a run that was never interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.utils import seed_all
from stock_helpers import (
    is_expert,
    save_stock,
    stock_config,
    stock_model,
    stock_storage,
    variable_rows,
)
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from olmo_flex_ext.checkpoint import (
    iter_tensors,
    load_model,
    read_config,
    read_dcp_entry,
    tensor_shapes,
)
from olmo_flex_ext.cli import main
from olmo_flex_ext.train.experiment import check_resumable, load_experiment, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "train_configs" / "tiny_from_checkpoint.py")
STEPS, STOP = 5, 2
EXPERTS, HIDDEN = 4, 64  # top-2 of 4; the expert width equals d_model (64)
SAVE_START = (
    "--trainer.callbacks.checkpointer.pre_train_checkpoint=true"  # step0: the loaded weights
)


@pytest.fixture(scope="module", autouse=True)
def data_root(tmp_path_factory):
    """The synthetic token data in a temp dir, one thread (as test_foundation_train)."""
    root = tmp_path_factory.mktemp("data")
    saved = {k: os.environ.get(k) for k in ("OLMO_FLEX_DATA_ROOT", "OMP_NUM_THREADS")}
    os.environ.update(OLMO_FLEX_DATA_ROOT=str(root), OMP_NUM_THREADS="1")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def experiment(save_folder, *extra):
    config = load_experiment(
        CONFIG,
        [
            f"--trainer.save_folder={save_folder}",
            f"--trainer.max_duration.value={STEPS}",
            "--trainer.callbacks.checkpointer.save_interval=2",
            "--trainer.callbacks.wandb.enabled=false",
            *extra,
        ],
    )
    config.train_module.dp_config = None  # one process
    return config


def build_trainer(config):
    """What train() builds, without training."""
    seed_all(config.init_seed)
    train_module = config.train_module.build(config.model.build(init_device="meta"))
    data_loader = config.data_loader.build(config.dataset.build(), dp_process_group=None)
    return config.trainer.build(train_module, data_loader)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stock_layout(layout: str):
    return stock_config(layout, experts=EXPERTS, top_k=2, d_model=64, hidden=HIDDEN, vocab=512)


@pytest.fixture(scope="module")
def stock_init(tmp_path_factory):
    """A stock model-only checkpoint (default layout), the weights every run starts from."""
    config = stock_layout("default")
    model = stock_model(config, seed=5)
    return model, save_stock(model, config, tmp_path_factory.mktemp("init") / "stock")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, stock_init):
    """A variable-width run from --load_path=<the stock checkpoint>, 5 steps without a stop."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    trainer = train(experiment(folder, f"--load_path={stock_init[1]}", SAVE_START))
    assert trainer.global_step == STEPS
    return folder, state(trainer.train_module.model)


def test_load_path_converts_a_stock_checkpoint(uninterrupted, stock_init):
    folder, _ = uninterrupted
    stock, _ = stock_init
    start = dict(iter_tensors(folder / "step0", list(tensor_shapes(folder / "step0"))))
    for name, stored in stock.state_dict().items():
        expected = (
            variable_rows(name, stored, "default", EXPERTS, HIDDEN) if is_expert(name) else stored
        )
        assert torch.equal(start[name], expected), name


@pytest.fixture(scope="module", params=["default", "dropless"])
def stock_run(request, tmp_path_factory, uninterrupted, stock_init):
    """A stock OLMo-core trainer checkpoint at step 2, written by OLMo-core's Trainer for its own
    MoE model, holding what the uninterrupted run held at step 2: weights and AdamW moments
    (stored in the stock layout by OLMo-core's weight views), step, data position, RNG states."""
    layout = request.param
    d = tmp_path_factory.mktemp(f"stock-{layout}")
    folder, _ = uninterrupted
    ours = build_trainer(experiment(d / "ours", f"--load_path={stock_init[1]}"))
    ours.load_checkpoint(str(folder / f"step{STOP}"))

    config = experiment(d / "run", f"--load_path={stock_init[1]}")
    config.model = stock_layout(layout)
    trainer = build_trainer(config)
    stock_model_ = trainer.train_module.model

    def to_stock(name, t):
        return stock_storage(name, t, layout, EXPERTS, HIDDEN) if is_expert(name) and t.dim() else t

    weights = ours.train_module.model.state_dict()
    stock_model_.load_state_dict({k: to_stock(k, v) for k, v in weights.items()})
    optim = get_optimizer_state_dict(ours.train_module.model, ours.train_module.optim)
    optim["state"] = {
        k: {s: to_stock(k, v) for s, v in st.items()} for k, st in optim["state"].items()
    }
    set_optimizer_state_dict(stock_model_, trainer.train_module.optim, optim)
    trainer.load_state_dict(
        torch.load(folder / f"step{STOP}" / "train" / "rank0.pt", weights_only=False)
    )
    trainer.callbacks["config_saver"].config = config.as_config_dict()  # writes config.json
    trainer.save_checkpoint()
    return layout, d / "run"


def test_a_stock_run_continues_bitwise(stock_run, uninterrupted, tmp_path, capsys):
    layout, stock_folder = stock_run
    _, expected = uninterrupted
    assert main(["info", str(stock_folder)]) == 0
    assert f"{layout} layout" in capsys.readouterr().out

    converted = tmp_path / "converted"
    assert main(["import-olmo-core", str(stock_folder), str(converted)]) == 0
    step = converted / f"step{STOP}"
    trainer_state = Path("train") / "rank0.pt"  # step, data position, RNG: copied as they are
    assert (step / trainer_state).read_bytes() == (
        stock_folder / f"step{STOP}" / trainer_state
    ).read_bytes()
    trainer = train(experiment(converted))  # the model config comes from the converted run
    assert trainer.global_step == STEPS
    for name, t in state(trainer.train_module.model).items():
        assert torch.equal(t, expected[name]), name

    # written back: every tensor (weights and optimizer state) bitwise the stock checkpoint's
    back = tmp_path / "back"
    assert main(["export-olmo-core", str(step), str(back), "--layout", layout]) == 0
    stock_config_ = read_config(stock_folder)["model"]
    assert read_config(back)["model"] == stock_config_
    original = _dcp(stock_folder / f"step{STOP}" / "model_and_optim")
    written = _dcp(back / f"step{STOP}" / "model_and_optim")
    assert original.keys() == written.keys() and any(k.startswith("optim.state.") for k in original)
    for k, t in original.items():
        assert torch.equal(written[k], t), k


def _dcp(directory: Path) -> dict:
    from olmo_core.distributed.checkpoint import get_checkpoint_metadata

    meta = get_checkpoint_metadata(str(directory)).state_dict_metadata
    return {k: read_dcp_entry(directory, k, m) for k, m in meta.items() if hasattr(m, "size")}


def test_three_steps_from_a_stock_trainer_checkpoint(stock_run, tmp_path):
    layout, stock_folder = stock_run
    run = tmp_path / "run"
    trainer = train(
        experiment(run, f"--load_path={stock_folder}", "--trainer.max_duration.value=3", SAVE_START)
    )
    assert trainer.global_step == 3
    start, loaded = load_model(run / "step0"), load_model(stock_folder)
    for name, t in start.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    trained = load_model(run / "step3").state_dict()
    assert any(not torch.equal(trained[k], t) for k, t in start.state_dict().items())


def test_a_stock_run_folder_resumes_in_place_only_in_our_layout(stock_run):
    layout, stock_folder = stock_run
    if layout == "default":
        with pytest.raises(OLMoConfigurationError, match="import-olmo-core"):
            train(experiment(stock_folder))
    else:
        check_resumable(str(stock_folder))  # dropless: OLMo-core resumes it as it is


def test_pruning_callback_takes_a_stock_teacher(tmp_path):
    """The pruning callback scores, checks and prunes a stock default-layout teacher: the student
    starts from the teacher's expert rows as OLMo-core's weight views define them."""
    config = stock_config("default", experts=2, top_k=2, d_model=64, hidden=256, vocab=512)
    teacher = stock_model(config, seed=7)
    ckpt = save_stock(teacher, config, tmp_path / "teacher")
    prune_config = str(ROOT / "train_configs" / "tiny_flex_prune.py")
    run = load_experiment(
        prune_config,
        [
            f"--trainer.save_folder={tmp_path / 'run'}",
            "--trainer.max_duration.value=1",
            "--trainer.callbacks.wandb.enabled=false",
            f"--trainer.callbacks.prune.teacher={ckpt}",
            "--trainer.callbacks.prune.num_seqs=4",
            "--trainer.callbacks.prune.batch_size=2",
            "--trainer.callbacks.prune.compare_num_seqs=2",
        ],
    )
    run.train_module.dp_config = None
    train(run)
    name = "blocks.1.feed_forward_moe.experts.mlp.w1"
    ((_, w1),) = iter_tensors(tmp_path / "run" / "prune" / "start", [name])
    rows = variable_rows(name, teacher.state_dict()[name], "default", 2, 256)
    assert w1.shape == (256 + 48, 64)
    assert torch.equal(w1[:256], rows[:256])  # the public expert, unpruned
    domain = rows[256:]
    kept = [int((domain == r).all(dim=1).nonzero()) for r in w1[256:]]
    assert kept == sorted(kept) and len(set(kept)) == 48  # 48 of its rows, in their order


@pytest.mark.slow
def test_load_path_under_fsdp_on_two_ranks(stock_init, uninterrupted, data_root, tmp_path):
    """Two gloo ranks with FSDP: each rank's shard of every weight comes from the converted stock
    tensors, so the run's start equals the single-process one's."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "olmo_flex_ext.launch",
        CONFIG,
        f"--trainer.save_folder={run}",
        f"--load_path={stock_init[1]}",
        "--trainer.max_duration.value=1",
        "--trainer.callbacks.wandb.enabled=false",
        SAVE_START,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OLMO_FLEX_DATA_ROOT": str(data_root)}
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    start, expected = load_model(run / "step0").state_dict(), load_model(uninterrupted[0] / "step0")
    for name, t in expected.state_dict().items():
        assert torch.equal(start[name], t), name
