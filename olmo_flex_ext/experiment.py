"""An experiment = model + data + train module + trainer, built and run through OLMo-core.

Train configs (``train_configs/*.py``) define ``build_config()`` returning an
:class:`ExperimentConfig`; :func:`load_experiment` loads one with dotted overrides and
:func:`train` runs it. The launcher (``python -m olmo_flex_ext.launch``) wires these to torchrun.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import torch
from olmo_core.data import NumpyDataLoaderConfig, NumpyDatasetConfig
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.script_utils import ExperimentConfig as OLMoExperimentConfig
from olmo_core.train import TrainerConfig
from olmo_core.train.callbacks import ConfigSaverCallback
from olmo_core.train.train_module import TransformerTrainModuleConfig
from olmo_core.utils import seed_all

from .checkpoint import check_shapes, resolve_checkpoint

__all__ = [
    "ExperimentConfig",
    "load_experiment",
    "train",
    "world_size",
    "check_parallelism",
    "distributed_backend",
    "process_group",
]

log = logging.getLogger(__name__)


@dataclass
class ExperimentConfig(OLMoExperimentConfig):
    """OLMo-core's experiment config; ``load_path`` gives initial weights (weights only, e.g. a
    model-only checkpoint) for a fresh run, while a run folder with checkpoints always resumes.

    A train config may leave ``model`` as ``None``: :func:`load_experiment` then takes the model
    config from the checkpoint the run starts from (the run folder's latest, else ``load_path``).
    ``freeze_params`` (fnmatch patterns) are added to the model's ``freeze_params`` once the model
    is known, so a config can freeze parts of a model it takes from a checkpoint.
    """

    model: Optional[TransformerConfig]
    dataset: NumpyDatasetConfig
    data_loader: NumpyDataLoaderConfig
    train_module: TransformerTrainModuleConfig
    trainer: TrainerConfig
    init_seed: int = 12536
    load_path: Optional[str] = None
    freeze_params: Optional[List[str]] = None


def load_experiment(path: str, overrides: Optional[List[str]] = None) -> ExperimentConfig:
    """Import a train config file, call its ``build_config()`` and apply dotted overrides
    (``--trainer.save_folder=/tmp/run``, ``--model.block.feed_forward_moe.expert_widths=[96,32]``)."""
    file = Path(path)
    if not file.is_file():
        raise OLMoConfigurationError(
            f"train config {path} does not exist; see train_configs/ for the available ones"
        )
    spec = importlib.util.spec_from_file_location(f"_train_config_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build_config", None)
    if not callable(build):
        raise OLMoConfigurationError(
            f"train config {path} has no build_config() function; define one that returns an "
            "ExperimentConfig"
        )
    config = build()
    if not isinstance(config, OLMoExperimentConfig):
        raise OLMoConfigurationError(
            f"{path}: build_config() returned {type(config).__name__}, not an ExperimentConfig"
        )
    if overrides:
        config = config.merge([o if o.startswith("--") else f"--{o}" for o in overrides])
    if config.model is None:
        config.model = _model_from_checkpoint(config, path)
        vocab = config.dataset.tokenizer.vocab_size
        if config.model.vocab_size < vocab:
            raise OLMoConfigurationError(
                f"the checkpoint's model has a vocabulary of {config.model.vocab_size} but the data "
                f"of {path} uses {vocab} token ids; use a train config with matching data"
            )
    extra = getattr(config, "freeze_params", None)
    if extra:
        config.model = config.model.copy()
        config.model.freeze_params = list(dict.fromkeys((config.model.freeze_params or []) + extra))
    return config


def _model_from_checkpoint(config: ExperimentConfig, path: str) -> TransformerConfig:
    from .checkpoint import list_steps, read_model_config

    if list_steps(config.trainer.save_folder):
        return read_model_config(config.trainer.save_folder)
    if config.load_path:
        return read_model_config(config.load_path)
    raise OLMoConfigurationError(
        f"{path} takes its model from a checkpoint: pass --load_path=CHECKPOINT (a model-only "
        "checkpoint, a trainer stepN/ directory or a run folder)"
    )


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_parallelism(config: ExperimentConfig) -> None:
    """Refuse multi-rank runs without data parallelism (gradients would never be synchronised);
    drop data parallelism for single-process runs, where OLMo-core refuses it."""
    dp = getattr(config.train_module, "dp_config", None)
    if world_size() > 1 and dp is None:
        raise OLMoConfigurationError(
            f"{world_size()} ranks but train_module.dp_config is None, so gradients would never be "
            "synchronised; set it, e.g. --train_module.dp_config.name=fsdp (or ddp/hsdp), or run "
            "one rank"
        )
    if world_size() == 1 and dp is not None:
        log.info("Single process: data parallelism (%s) is not used", dp.name)
        config.train_module.dp_config = None


def distributed_backend() -> Optional[str]:
    """gloo on CPU, nccl (with gloo for CPU tensors) on CUDA, none for one process."""
    if world_size() == 1:
        return None
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """For a command that runs on every rank under torchrun: a process group (gloo on CPU, NCCL on
    CUDA) unless there is one rank or one exists already; destroyed at the end if started here."""
    import torch.distributed as dist

    backend = distributed_backend()
    started = backend is not None and not dist.is_initialized()
    if started:
        dist.init_process_group(backend=backend)
    try:
        yield
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def train(config: ExperimentConfig) -> None:
    """Build every component and train, resuming from the run folder's latest checkpoint if any."""
    seed_all(config.init_seed)
    model = config.model.build(init_device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    train_module = config.train_module.build(model)
    dataset = config.dataset.build()
    data_loader = config.data_loader.build(dataset, dp_process_group=train_module.dp_process_group)
    trainer = config.trainer.build(train_module, data_loader)

    for callback in trainer.callbacks.values():
        if isinstance(callback, ConfigSaverCallback):  # also hands the config to W&B
            callback.config = config.as_config_dict()

    if not trainer.maybe_load_checkpoint() and config.load_path:
        init = resolve_checkpoint(config.load_path)
        check_shapes(init, shapes)
        log.info("Fresh run: loading initial weights from %s", init)
        trainer.load_checkpoint(str(init), load_trainer_state=False, load_optim_state=False)
    trainer.fit()
