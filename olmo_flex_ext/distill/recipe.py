"""Turn an experiment config into a distillation run (store-based or online teacher)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from olmo_core.config import Config
from olmo_core.train.callbacks import ConsoleLoggerCallback

from .data import KDDataLoaderConfig, TopKFSLDatasetConfig
from .loss import KDLossConfig
from .train_module import KD_METRICS, KDTrainModuleConfig

__all__ = ["with_distillation"]


def _init_fields(config: Config, drop=()) -> Dict[str, Any]:
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)  # type: ignore[arg-type]
        if f.init and f.name not in drop
    }


def with_distillation(
    config,
    *,
    store: Optional[str] = None,
    teacher_path: Optional[str] = None,
    kd: Optional[KDLossConfig] = None,
    online_teacher: bool = False,
    teacher_top_k: int = 128,
):
    """Replace the train module of ``config`` (an ``ExperimentConfig`` with an FSL dataset) by
    :class:`KDTrainModuleConfig` with the same settings; with a ``store`` (the default mode) the
    dataset and data loader become their top-k versions, with ``online_teacher`` they stay and the
    teacher at ``teacher_path`` runs in the training step. Returns the config."""
    if online_teacher == (store is not None):
        raise ValueError("give exactly one of store= (top-k store) or online_teacher=True")
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
