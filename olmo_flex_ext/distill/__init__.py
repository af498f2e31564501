"""Knowledge distillation: teacher top-k store, generation, KD loss, data path and train module.

Names are imported on first use so that ``olmo-flex --help`` stays fast.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "TopKStore": "topk_store",
    "TopKStoreError": "topk_store",
    "TopKCodec": "codec",
    "generate_store": "generate",
    "teacher_topk": "generate",
    "KDLossConfig": "loss",
    "topk_kd_loss": "loss",
    "TopKFSLDatasetConfig": "data",
    "TopKFSLDataset": "data",
    "TopKCollator": "data",
    "KDDataLoaderConfig": "data",
    "KDTrainModuleConfig": "train_module",
    "KDTrainModule": "train_module",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
