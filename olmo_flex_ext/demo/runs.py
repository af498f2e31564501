"""The demo's training runs, built with the same recipe functions as the 7B train configs.

- :func:`public_experiment`: a dense OLMo-2 model on general text (:func:`flex_experiment`);
- :func:`expert_experiment`: a domain expert upcycled from it, only the expert's MLP rows
  training (:func:`~olmo_flex_ext.recipes.with_expert_training`, FlexOlmo's recipe);
- :func:`distill_experiment`: what ``train_configs/flex_math_5504.py`` does at 7B: the student has
  the pruned widths, :class:`PruneCallback` prunes the teacher into it before step 1, and the loss is
  KL distillation from the teacher's top-k store (:func:`~olmo_flex_ext.recipes.with_distillation`),
  expert rows only.

:func:`run_experiment` trains one in this process as ``python -m olmo_flex_ext.launch`` does for
one rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

if TYPE_CHECKING:
    from olmo_core.train.callbacks import Callback

    from ..train.experiment import ExperimentConfig
    from .config import DemoConfig, RunSettings
    from .data.corpus import DemoData

__all__ = [
    "WANDB_PROJECT",
    "public_experiment",
    "expert_experiment",
    "distill_experiment",
    "router_tuning_experiment",
    "run_experiment",
]

WANDB_PROJECT = "olmo-flex-demo"


def _experiment(
    config: DemoConfig,
    data: DemoData,
    save_folder: Path,
    *,
    split: Union[str, List[str]],
    run: RunSettings,
    name: str,
    model=None,
    load_path: Optional[str] = None,
    callbacks: Optional[Dict[str, "Callback"]] = None,
) -> ExperimentConfig:
    from olmo_core.train import Duration

    from ..recipes import flex_experiment

    tokens = config.seq_len * config.batch_seqs
    return flex_experiment(
        model=model,
        data_paths=[data.token_glob(s) for s in ([split] if isinstance(split, str) else split)],
        tokenizer=data.tokenizer(),
        save_folder=str(save_folder),
        sequence_length=config.seq_len,
        global_batch_tokens=tokens,
        microbatch_tokens=tokens,
        max_duration=Duration.steps(run.steps),
        lr=run.lr,
        warmup_steps=run.warmup_steps,
        save_interval=run.save_interval,
        wandb_project=WANDB_PROJECT if config.wandb else None,
        wandb_name=name,
        load_path=load_path,
        seed=config.seed,
        extra_callbacks=callbacks,
    )


def public_experiment(config: DemoConfig, data: DemoData, save_folder: Path) -> ExperimentConfig:
    """The public model: a dense OLMo-2 (post-norm, QK-norm: FlexOlmo's blocks) trained on the
    general corpus, with an in-loop evaluation of held-out text loss."""
    from ..eval.callback import FlexEvalCallback
    from ..models import olmo2_dense

    model = olmo2_dense(
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        vocab_size=data.tokenizer().padded_vocab_size(),
        hidden_size=config.public_width,
    )
    evaluator = FlexEvalCallback(
        general_data=data.token_glob("general-eval"),
        seq_len=config.seq_len,
        max_windows=config.eval_windows,
        eval_interval=max(config.public.steps // 4, 1),
    )
    return _experiment(
        config, data, save_folder, split="general-train", run=config.public, name="public",
        model=model, callbacks={"flex_eval": evaluator},
    )  # fmt: skip


def expert_experiment(
    config: DemoConfig,
    data: DemoData,
    save_folder: Path,
    *,
    upcycled: str,
    split: str,
    run: RunSettings,
    name: str,
) -> ExperimentConfig:
    """A domain expert: the upcycled 2-expert model trained on ``split`` with everything but
    expert 1's MLP rows frozen. Its router row and expert bias (the domain router) stay fixed,
    unless ``config.train_expert_router``: trained only on its own domain, the row would learn to
    prefer the expert on every input."""
    from ..recipes import with_expert_training
    from ..train.experiment import resolve_model

    splits = [split, "general-train"] if config.expert_with_public else split
    experiment = _experiment(
        config, data, save_folder, split=splits, run=run, name=name, load_path=upcycled
    )
    experiment = with_expert_training(experiment, [1], train_router=config.train_expert_router)
    return resolve_model(experiment, name)


def distill_experiment(
    config: DemoConfig,
    data: DemoData,
    save_folder: Path,
    *,
    teacher: str,
    scores: str,
    store: str,
    widths: List[List[int]],
    budget_width: Optional[int],
    name: str,
) -> ExperimentConfig:
    """The math expert pruned to ``widths`` (per layer) and distilled from ``teacher``'s top-k
    ``store``: the 7B math configs' recipe (pruning callback, KD train module, expert rows only).
    With ``budget_width`` the pruning callback checks that ``widths`` are the importance
    allocation at that width's neuron budget."""
    from ..checkpoint import read_model_config
    from ..models import with_expert_widths
    from ..prune.callback import PruneCallback
    from ..recipes import with_distillation, with_expert_training
    from ..train.experiment import resolve_model

    prune = PruneCallback(
        teacher=teacher,
        scores=scores,
        seq_len=config.seq_len,
        budget_width=budget_width,
        multiple=config.width_multiple,
    )
    student = with_expert_widths(read_model_config(teacher), widths)
    experiment = _experiment(
        config, data, save_folder, split="math-distill", run=config.distill, name=name,
        model=student, callbacks={"prune": prune},
    )  # fmt: skip
    experiment = with_distillation(experiment, store=store)
    return resolve_model(with_expert_training(experiment, [1], train_router=False), name)


def router_tuning_experiment(
    config: DemoConfig, data: DemoData, save_folder: Path, *, merged: str, domains: List[str]
) -> ExperimentConfig:
    """Router-only training of a merged model on a mix of the ``domains``' training data
    (:func:`olmo_flex_ext.recipes.with_router_training`, FlexOlmo's router tuning)."""
    from ..recipes import with_router_training
    from ..train.experiment import resolve_model

    experiment = _experiment(
        config, data, save_folder, split=[f"{d}-train" for d in domains], run=config.router,
        name="router-tuning", load_path=merged,
    )  # fmt: skip
    return resolve_model(with_router_training(experiment), "router tuning")


_ENVIRONMENT_READY = False


def run_experiment(experiment: ExperimentConfig) -> None:
    """Train an experiment in this process exactly as ``python -m olmo_flex_ext.launch`` does
    for one rank (the training environment is prepared once per process); a run folder that
    holds checkpoints resumes from the latest."""
    global _ENVIRONMENT_READY
    from olmo_core.train import prepare_training_environment

    from ..train.experiment import check_parallelism, train

    if not _ENVIRONMENT_READY:
        prepare_training_environment(backend=None)
        _ENVIRONMENT_READY = True
    check_parallelism(experiment)
    train(experiment)
