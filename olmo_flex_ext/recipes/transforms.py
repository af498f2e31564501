"""Experiment transforms: each takes an experiment config and returns a changed copy (the
argument is never edited), so they compose: ``with_expert_training(with_distillation(c, ...), [1])``.

- :func:`with_distillation`: KL distillation from a top-k store or an online teacher;
- :func:`with_expert_training`: only chosen experts' MLP rows (and router rows) train, FlexOlmo's
  recipe for a new expert;
- :func:`with_router_training`: only the routers train (FlexOlmo's router tuning, "RT").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, TypeVar

from olmo_core.config import Config
from olmo_core.optim import OptimGroupOverride
from olmo_core.train.callbacks import ConsoleLoggerCallback

from ..distill.data import KDDataLoaderConfig, TopKFSLDatasetConfig
from ..distill.loss import KDLossConfig
from ..distill.train_module import KD_METRICS, KDTrainModuleConfig
from ..train.trainable import (
    ROUTER_ONLY_FREEZE,
    ROUTER_PARAMS,
    RouterOnlyCheck,
    TrainableExpertsCallback,
    expert_freeze_patterns,
    tolerate_wrappers,
)

__all__ = ["with_distillation", "with_expert_training", "with_router_training"]

C = TypeVar("C", bound=Config)


def _init_fields(config: Config, drop=()) -> Dict[str, Any]:
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)  # type: ignore[arg-type]
        if f.init and f.name not in drop
    }


def with_distillation(
    config: C,
    *,
    store: Optional[str] = None,
    teacher_path: Optional[str] = None,
    kd: Optional[KDLossConfig] = None,
    online_teacher: bool = False,
    teacher_top_k: int = 128,
) -> C:
    """A copy of ``config`` (an ``ExperimentConfig`` with an FSL dataset) whose train module is
    :class:`KDTrainModuleConfig` with the same settings; with a ``store`` (the default mode) the
    dataset and data loader become their top-k versions, with ``online_teacher`` they stay and the
    teacher at ``teacher_path`` runs in the training step."""
    if online_teacher == (store is not None):
        raise ValueError("give exactly one of store= (top-k store) or online_teacher=True")
    config = config.copy()
    tm = config.train_module
    config.train_module = KDTrainModuleConfig(
        **_init_fields(tm, drop=("kd", "teacher_path", "online_teacher", "teacher_top_k")),
        kd=kd or KDLossConfig(),
        teacher_path=teacher_path,
        online_teacher=online_teacher,
        teacher_top_k=teacher_top_k,
    )
    console = ConsoleLoggerCallback()
    console.metrics = console.metrics + list(KD_METRICS)
    config.trainer.callbacks.setdefault("console_logger", console)
    if store is not None:
        config.dataset = TopKFSLDatasetConfig(
            **_init_fields(config.dataset, drop=("topk_store", "top_k")), topk_store=store
        )
        config.data_loader = KDDataLoaderConfig(**_init_fields(config.data_loader))
    return config


def with_expert_training(config: C, experts: List[int], train_router: bool = True) -> C:
    """A copy of ``config`` that trains only ``experts`` (their MLP rows and, with
    ``train_router``, their router rows): everything else is frozen through the experiment's
    ``freeze_params`` (applied to the model once it is known, also when it comes from
    ``load_path``); :class:`~olmo_flex_ext.train.trainable.TrainableExpertsCallback` makes the
    experiment split the other experts' rows off into frozen parameters (no gradient, no optimizer
    state) and masks their router rows, on which weight decay is off."""
    config = config.copy()
    patterns = (config.freeze_params or []) + expert_freeze_patterns(train_router)
    config.freeze_params = list(dict.fromkeys(patterns))
    if train_router:
        optim = config.train_module.optim
        optim.group_overrides = list(optim.group_overrides or []) + [
            OptimGroupOverride(
                params=[tolerate_wrappers(ROUTER_PARAMS)], opts={"weight_decay": 0.0}
            )
        ]
    config.trainer.callbacks["trainable_experts"] = TrainableExpertsCallback(
        experts=list(experts), train_router=train_router
    )
    return config


def with_router_training(config: C) -> C:
    """A copy of ``config`` that trains only the routers of its model, also of a model it reads
    from ``load_path``: every other parameter family is frozen through the experiment's
    ``freeze_params``, weight decay is 0 and
    :class:`~olmo_flex_ext.train.trainable.RouterOnlyCheck` refuses to start if anything but the
    routers would train."""
    config = config.copy()
    config.freeze_params = list(dict.fromkeys((config.freeze_params or []) + ROUTER_ONLY_FREEZE))
    config.train_module.optim.weight_decay = 0.0
    config.trainer.callbacks["router_only_check"] = RouterOnlyCheck()
    return config
