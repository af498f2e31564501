"""The 7B recipes: Flex-math-2x7B-1T's math expert pruned and distilled, at a uniform width
(:func:`flex_math_7b`) or at widths allocated by importance under a budget
(:func:`flex_math_budget_7b`), with :func:`flex_math_prune_callback`; and router-only training of
a merged model (:func:`router_experiment`). Paths default to ``$OLMO_FLEX_DATA_ROOT`` (else
``/data/olmo-flex``) and stay overridable from the command line.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from olmo_core.data import TokenizerConfig
from olmo_core.train import Duration
from olmo_core.train.callbacks import Callback
from olmo_core.train.train_module import TransformerActivationCheckpointingConfig

from ..models import flex_olmo_2x7b, with_expert_widths
from ..prune.callback import PruneCallback
from ..prune.scores import ImportanceScores
from ..train.experiment import ExperimentConfig
from .experiments import BF16, data_root, flex_experiment
from .transforms import with_distillation, with_expert_training, with_router_training

__all__ = [
    "FLEX_7B_AC",
    "flex_math_7b",
    "flex_math_budget_7b",
    "flex_math_prune_callback",
    "router_experiment",
]

log = logging.getLogger(__name__)

SCORES_ENV = "OLMO_FLEX_SCORES"


FLEX_7B_AC: Optional[TransformerActivationCheckpointingConfig] = None
"""Activation checkpointing of the 7B configs: none. The memory plan (docs/performance.md) puts a
flex_math_5504 step at 40 GiB per GPU on 8 GPUs (36 on 16) without it, well within an 80 GB card,
and ``selected_ops`` (18 GiB) would execute 23% more FLOPs (recomputation); on smaller cards, or
for larger micro-batches, set ``--train_module.ac_config='{mode: selected_ops}'``."""


def flex_math_7b(
    domain_width: int,
    *,
    prune: bool = True,
    extra_callbacks: Optional[Dict[str, Callback]] = None,
) -> ExperimentConfig:
    """Flex-math-2x7B-1T with the math expert at ``domain_width``, distilled from the unpruned
    model's top-128 store with the reference settings: AdamW (no weight decay), lr 2e-4 with
    cosine decay, ~228M tokens; only the math expert (expert 1) and its router row train. A step
    is 16 x 4096 = 65,536 tokens (it splits over 1, 2, 4, 8 or 16 GPUs). Speed and memory, each
    justified by the memory plan in docs/performance.md: bfloat16 compute with float32 gradient
    reduction and optimizer state, compile, :data:`FLEX_7B_AC` activation checkpointing.
    With ``prune`` (the default) the pruning callback
    (:func:`flex_math_prune_callback`) makes the initial weights from the teacher on a fresh run;
    without it they come from ``load_path`` (a checkpoint pruned offline). Paths (overridable):
    ``load_path``, ``dataset.topk_store``, ``train_module.teacher_path``, the callback's
    ``teacher`` and ``calibration``; all under ``$OLMO_FLEX_DATA_ROOT``."""
    seq = 4096
    root = data_root("/data/olmo-flex")
    config = flex_experiment(
        model=flex_olmo_2x7b(domain_width),
        data_paths=[f"{root}/dolmino-math/*.npy"],
        tokenizer=TokenizerConfig.dolma2(),
        save_folder=f"runs/flex_math_{domain_width}",
        sequence_length=seq,
        global_batch_tokens=16 * seq,
        microbatch_tokens=seq,
        max_duration=Duration.tokens(228_000_000),
        lr=2e-4,
        warmup_steps=100,
        save_interval=500,
        ephemeral_save_interval=100,
        wandb_project="olmo-flex",
        wandb_name=f"flex-math-{domain_width}",
        load_path=f"{root}/checkpoints/flex-math-{domain_width}-pruned",
        extra_callbacks=extra_callbacks,
        param_dtype=BF16,
        compile_model=True,
        ac_config=FLEX_7B_AC,
    )
    config = with_distillation(
        config,
        store=f"{root}/topk/flex-math-2x7b-top128",
        teacher_path=f"{root}/checkpoints/Flex-math-2x7B-1T",
    )
    if prune:
        config.load_path = None  # the pruning callback makes the initial weights
        config.trainer.callbacks["prune"] = flex_math_prune_callback(root)
    return with_expert_training(config, experts=[1], train_router=True)


def flex_math_budget_7b(budget_width: int, *, scores: Optional[str] = None) -> ExperimentConfig:
    """:func:`flex_math_7b` with the math expert's width chosen per layer by importance, at the
    parameter count of ``budget_width`` in every layer.

    The widths come from the teacher's importance scores, read when the config is built: from
    ``scores``, else ``$OLMO_FLEX_SCORES``, else ``<save folder>/prune/importance.safetensors``.
    Without scores the widths are a uniform placeholder: the first launch computes the scores into
    the run folder and stops, asking to launch again (the model can only be built once its widths
    are known)."""
    config = flex_math_7b(budget_width)  # uniform widths until the scores are known
    run = "runs/flex_math_budget"
    config.trainer.save_folder = run
    config.dataset.work_dir = f"{run}/dataset-cache"
    config.trainer.callbacks["wandb"].name = "flex-math-budget"
    prune = flex_math_prune_callback(budget_width=budget_width)
    path = scores or os.environ.get(SCORES_ENV, f"{run}/prune/importance.safetensors")
    if os.path.isfile(path):
        prune.scores = path
        config.model = with_expert_widths(
            config.model, prune.allocation(ImportanceScores.load(path))
        )
    else:
        log.warning(
            "No importance scores at %s yet: the widths shown are a uniform placeholder; the "
            "first launch computes the scores and asks to launch again", path,
        )  # fmt: skip
    config.trainer.callbacks["prune"] = prune
    return config


def flex_math_prune_callback(root: Optional[str] = None, **settings: Any) -> PruneCallback:
    """The pruning callback of the 7B math configs: the teacher is Flex-math-2x7B-1T imported to
    ``<root>/checkpoints/Flex-math-2x7B-1T`` (``olmo-flex import-hf``), calibrated on the math
    token files (the better choice for a math expert), 1024 sequences of 4096 tokens. ``root``
    defaults to ``$OLMO_FLEX_DATA_ROOT`` (else ``/data/olmo-flex``), like the configs' training data."""
    root = root or data_root("/data/olmo-flex")
    defaults: Dict[str, Any] = dict(
        teacher=f"{root}/checkpoints/Flex-math-2x7B-1T",
        calibration=[f"{root}/dolmino-math/*.npy"],
        seq_len=4096,
        num_seqs=1024,
    )
    return PruneCallback(**{**defaults, **settings})


def router_experiment(**settings: Any) -> ExperimentConfig:
    """An experiment that trains only the routers of the model it starts from (``load_path``,
    usually given as ``--load_path=MERGED``; the model config is read from that checkpoint):
    :func:`flex_experiment` with ``settings`` (data, batch sizes, lr, run folder, W&B), then
    :func:`with_router_training`."""
    return with_router_training(flex_experiment(model=None, **settings))  # type: ignore[arg-type]
