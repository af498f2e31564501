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
from typing import Any, Iterator, List, Optional, Tuple

import torch
import yaml
from olmo_core.data import NumpyDataLoaderConfig, NumpyDatasetConfig
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.io import is_url
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.script_utils import ExperimentConfig as OLMoExperimentConfig
from olmo_core.train import Trainer, TrainerConfig
from olmo_core.train.callbacks import ConfigSaverCallback
from olmo_core.train.train_module import TransformerTrainModuleConfig
from olmo_core.utils import seed_all

from ..checkpoint import (
    check_shapes,
    list_steps,
    load_state_dict,
    resolve_checkpoint,
    stock_conversion,
)

__all__ = [
    "ExperimentConfig",
    "load_experiment",
    "resolve_model",
    "train",
    "build_model",
    "world_size",
    "check_parallelism",
    "parse_override",
    "distributed_backend",
    "process_group",
    "load_initial_weights",
    "check_resumable",
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

    def merge(self, dotlist: List[str], prefix: Optional[str] = None, strict: bool = True):
        """Apply ``--a.b.c=value`` overrides (values are YAML) and return a new config.

        Unlike the inherited ``Config.merge`` this reaches into integer-keyed dicts such as
        ``model.block_overrides`` (``--model.block_overrides.3.feed_forward_moe.expert_widths=[..]``)
        and names the first unknown key instead of raising a bare ``KeyError``.
        """
        if prefix is not None or not strict:
            return super().merge(dotlist, prefix=prefix, strict=strict)
        data = self.as_dict(include_class_name=True, include_registered_name=True)
        for item in dotlist:
            key, value = parse_override(item)
            set_dotted(data, key, value, item)
        try:
            return self.from_dict(data)
        except OLMoConfigurationError:
            raise
        except Exception as e:
            raise OLMoConfigurationError(
                f"the overrides {' '.join(dotlist)} do not make a valid config "
                f"({type(e).__name__}: {e}); check the field names and value types"
            ) from e


def load_experiment(
    path: str, overrides: Optional[List[str]] = None, model: Optional[TransformerConfig] = None
) -> ExperimentConfig:
    """Import a train config file, call its ``build_config()`` and apply dotted overrides
    (``--trainer.save_folder=/tmp/run``, ``--model.block.feed_forward_moe.expert_widths=[96,32]``).
    ``model`` stands in for the model of a config that takes it from a checkpoint (planning a
    run without the checkpoint at hand)."""
    file = Path(path)
    if not file.is_file():
        raise OLMoConfigurationError(
            f"train config {path} does not exist; see train_configs/ for the available ones"
        )
    spec = importlib.util.spec_from_file_location(f"_train_config_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with config_errors(file, "loading it"):
        spec.loader.exec_module(module)
    build = getattr(module, "build_config", None)
    if not callable(build):
        raise OLMoConfigurationError(
            f"train config {path} has no build_config() function; define one that returns an "
            "ExperimentConfig"
        )
    with config_errors(file, "build_config()"):
        config = build()
    if not isinstance(config, OLMoExperimentConfig):
        raise OLMoConfigurationError(
            f"{path}: build_config() returned {type(config).__name__}, not an ExperimentConfig"
        )
    if model is not None and config.model is None:
        config.model = model
    if overrides:
        config = config.merge([o if o.startswith("--") else f"--{o}" for o in overrides])
    return resolve_model(config, path)


@contextlib.contextmanager
def config_errors(file: Path, what: str) -> Iterator[None]:
    """A train config that does not compile or raises while it runs is the user's error: one
    message naming the file and line (the traceback is kept as the cause, shown by --verbose)."""
    try:
        yield
    except OLMoConfigurationError:
        raise
    except SyntaxError as e:
        raise OLMoConfigurationError(
            f"{e.filename or file}:{e.lineno}: syntax error in the train config: {e.msg}"
        ) from e
    except Exception as e:
        import traceback

        frames = [
            f
            for f in traceback.extract_tb(e.__traceback__)
            if Path(f.filename).resolve() == file.resolve()
        ]
        line = f":{frames[-1].lineno}" if frames else ""
        raise OLMoConfigurationError(f"{file}{line}: {what} raised {type(e).__name__}: {e}") from e


def resolve_model(config: ExperimentConfig, source: str = "the experiment") -> ExperimentConfig:
    """A completed copy of a config (from a train config file, or built in code): the dataset's
    index cache in the run folder, the model config from the checkpoint the run starts from when
    ``model`` is None, ``freeze_params`` added to the model's. ``source`` names the config in
    errors."""
    config = config.copy()
    set_dataset_work_dir(config)
    if config.model is None:
        config.model = _model_from_checkpoint(config, source)
        # What the checkpoint's own run froze (e.g. all but one expert) is not this run's choice.
        config.model.freeze_params = None
        vocab = config.dataset.tokenizer.vocab_size
        if config.model.vocab_size < vocab:
            raise OLMoConfigurationError(
                f"the checkpoint's model has a vocabulary of {config.model.vocab_size} but the data "
                f"of {source} uses {vocab} token ids; use a train config with matching data"
            )
    extra = getattr(config, "freeze_params", None)
    if extra:
        config.model = config.model.copy()
        config.model.freeze_params = list(dict.fromkeys((config.model.freeze_params or []) + extra))
    return config


def set_dataset_work_dir(config: ExperimentConfig) -> None:
    """Put the dataset's index cache in the run folder when the config leaves it unset (OLMo-core
    would use the shared temp dir, where runs over different data can collide)."""
    folder = config.trainer.save_folder
    if getattr(config.dataset, "work_dir", "") is None and not is_url(folder):
        config.dataset.work_dir = f"{folder}/dataset-cache"


def parse_override(item: str) -> Tuple[str, Any]:
    """``--a.b=1`` -> ``("a.b", 1)``, the value parsed as YAML (a bare ``--flag`` is ``true``),
    the same syntax as OLMo-core's dotlists."""
    name, sep, raw = item.partition("=")
    name = name.strip(" -").replace("-", "_")
    if not name:
        raise OLMoConfigurationError(f"override {item!r} names no field; use --a.b=value")
    if not sep:
        return name, True
    if not raw.strip():
        return name, ""
    try:
        return name, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise OLMoConfigurationError(
            f"override {item!r}: its value is not valid YAML ({problem}{where}); write lists "
            "like [1, 2] and quote the whole override in the shell"
        ) from None


def set_dotted(data: Any, key: str, value: Any, item: str) -> None:
    """Set ``data[k1][k2]...= value`` for ``key = "k1.k2..."``; a segment matches a dict key as a
    string or as an integer, or a list index. The last segment may add a new dict key."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise OLMoConfigurationError(
                    f"override {item!r}: {'.'.join(parts[:depth]) or 'config'} is a list of "
                    f"{len(node)} entries; {part!r} is not an index into it"
                )
            slot: Any = int(part)
        elif isinstance(node, dict):
            if part in node or last and not (part.isdigit() and int(part) in node):
                slot = part
            elif part.isdigit() and int(part) in node:
                slot = int(part)
            else:
                where = ".".join(parts[:depth]) or "the experiment config"
                known = ", ".join(sorted(str(k) for k in node if k != "_CLASS_"))
                raise OLMoConfigurationError(
                    f"override {item!r}: {where} has no field {part!r} (it has: {known})"
                )
        else:
            where = ".".join(parts[:depth])
            raise OLMoConfigurationError(
                f"override {item!r}: {where} is a value ({node!r}), not a config with fields"
            )
        if last:
            node[slot] = value
        else:
            node = node[slot]


def _model_from_checkpoint(config: ExperimentConfig, path: str) -> TransformerConfig:
    from ..checkpoint import list_steps, read_model_config

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


def check_parallelism(config: ExperimentConfig, ranks: Optional[int] = None) -> None:
    """Refuse multi-rank runs without data parallelism (gradients would never be synchronised)
    and batch sizes the ranks cannot split (OLMo-core only finds out after building everything);
    drop data parallelism for single-process runs, where OLMo-core refuses it.
    ``ranks`` defaults to this launch's world size (``WORLD_SIZE``)."""
    tm = config.train_module
    dp = getattr(tm, "dp_config", None)
    ranks = ranks or world_size()
    if ranks > 1 and dp is None:
        raise OLMoConfigurationError(
            f"{ranks} ranks but train_module.dp_config is None, so gradients would never be "
            "synchronised; set it, e.g. --train_module.dp_config='{name: fsdp}' (or ddp/hsdp), "
            "or run one rank"
        )
    if ranks == 1 and dp is not None:
        log.info("Single process: data parallelism (%s) is not used", dp.name)
        tm.dp_config = None
    model_parallel = any(
        getattr(tm, name, None) is not None for name in ("tp_config", "cp_config", "pp_config")
    )
    micro = getattr(tm, "rank_microbatch_size", None)
    batch = config.data_loader.global_batch_size
    if not model_parallel and micro and batch % (micro * ranks) != 0:
        seq = getattr(config.dataset, "sequence_length", None) or micro
        raise OLMoConfigurationError(
            f"global batch of {batch:,d} tokens cannot be split into micro-batches of {micro:,d} "
            f"tokens on {ranks} ranks; make --data_loader.global_batch_size a multiple of "
            f"{micro * ranks:,d} (e.g. {-(-batch // (micro * ranks)) * micro * ranks:,d} = "
            f"{-(-batch // (micro * ranks)) * micro * ranks // seq} sequences of {seq}), lower "
            "--train_module.rank_microbatch_size, or change the number of ranks"
        )


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


def train(config: ExperimentConfig) -> Trainer:
    """Build every component and train, resuming from the run folder's latest checkpoint if any.
    Returns the trainer (its ``train_module.model`` holds the trained weights). The run folder is
    locked first and the checkpoints OLMo-core will open are checked (:mod:`.run_folder`)."""
    from .run_folder import guard_run

    with guard_run(config):
        return _train(config)


def _train(config: ExperimentConfig) -> Trainer:
    set_dataset_work_dir(config)
    seed_all(config.init_seed)
    model = build_model(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    train_module = config.train_module.build(model)
    dataset = config.dataset.build()
    data_loader = config.data_loader.build(dataset, dp_process_group=train_module.dp_process_group)
    trainer = config.trainer.build(train_module, data_loader)

    for callback in trainer.callbacks.values():
        if isinstance(callback, ConfigSaverCallback):  # also hands the config to W&B
            callback.config = config.as_config_dict()

    check_resumable(config.trainer.save_folder)
    resumed = trainer.maybe_load_checkpoint()
    if not resumed and config.load_path:
        init = resolve_checkpoint(config.load_path)
        check_shapes(init, shapes)
        log.info("Fresh run: loading initial weights from %s", init)
        load_initial_weights(trainer, init)
    if resumed and finished(trainer):
        # Trainer.fit() on a finished multi-rank run can deadlock (its cancel check and first
        # metrics reduction race on one process group), and there is nothing left to do.
        log.info(
            "The run in %s already finished (step %d)",
            config.trainer.save_folder,
            trainer.global_step,
        )
        return trainer
    trainer.fit()
    return trainer


def build_model(config: ExperimentConfig):
    """The experiment's model on the meta device, ready for its train module: in expert-only
    training (a :class:`~olmo_flex_ext.train.trainable.TrainableExpertsCallback`) the frozen
    experts' rows are split off the trainable weights."""
    from .trainable import TrainableExpertsCallback, set_trainable_experts

    model = config.model.build(init_device="meta")
    for callback in config.trainer.callbacks.values():
        if isinstance(callback, TrainableExpertsCallback) and callback.enabled:
            set_trainable_experts(model, callback.experts)
    return model


def load_initial_weights(trainer: Trainer, init: Path) -> None:
    """The weights of the checkpoint ``init`` into the trainer's model, without trainer or
    optimizer state. A stock OLMo-core MoE checkpoint whose expert layout differs from ours is
    converted one tensor at a time while it is read.

    Mirrors OLMo-core 3.0 ``Trainer.load_checkpoint`` with ``load_trainer_state=False`` and
    ``load_optim_state=False`` for such a checkpoint (its DCP loader cannot convert): weights
    loaded, then the callbacks' ``post_checkpoint_loaded`` and the trainer's checkpoint-loaded
    flag (which the pruning callback reads); its load-duration metric is left out.
    """
    conversion = stock_conversion(init)
    if conversion is None or conversion.identity:
        trainer.load_checkpoint(str(init), load_trainer_state=False, load_optim_state=False)
        return
    load_state_dict(trainer.train_module.model, init)
    # What Trainer.load_checkpoint (OLMo-core 3.0) does after loading weights: the callbacks
    # hear of it, and the trainer counts its initial weights as loaded from a checkpoint.
    for callback in trainer.callbacks.values():
        callback.post_checkpoint_loaded(str(init))
    trainer._checkpoint_loaded = True


def check_resumable(save_folder: str) -> None:
    """Refuse to resume from a run folder whose latest checkpoint stock OLMo-core wrote with an
    expert layout the variable-width model cannot load directly (OLMo-core would fail on shapes)."""
    if is_url(save_folder) or not list_steps(save_folder):
        return
    conversion = stock_conversion(save_folder)
    if conversion is not None and not conversion.identity:
        raise OLMoConfigurationError(
            f"the run folder {save_folder} holds stock OLMo-core MoE checkpoints whose experts "
            "are stored in another layout; convert the run first with `olmo-flex "
            f"import-olmo-core {save_folder} NEW_RUN` and train with "
            "--trainer.save_folder=NEW_RUN (weights, optimizer state, step and data position "
            "are kept)"
        )


def finished(trainer: Trainer) -> bool:
    """Whether the trainer has reached its max duration (or hard stop)."""
    now = dict(
        step=trainer.global_step, tokens=trainer.global_train_tokens_seen, epoch=trainer.epoch
    )
    return trainer.max_duration.due(**now) or (
        trainer.hard_stop is not None and trainer.hard_stop.due(**now)
    )
