"""Knowledge distillation: teacher top-k store, generation, KD loss, data path and train module.

Names are imported on first use so that ``olmo-flex --help`` stays fast.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TopKStore": "topk_store",
    "TopKStoreError": "topk_store",
    "TopKCodec": "codec",
    "generate_store": "generate",
    "teacher_topk": "generate",
    "load_teacher": "generate",
    "KDLossConfig": "loss",
    "topk_kd_loss": "loss",
    "TopKFSLDatasetConfig": "data",
    "TopKFSLDataset": "data",
    "TopKCollator": "data",
    "KDDataLoaderConfig": "data",
    "KDTrainModuleConfig": "train_module",
    "KDTrainModule": "train_module",
    "with_distillation": "recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
