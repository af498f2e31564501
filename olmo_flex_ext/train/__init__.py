"""Training through OLMo-core: the experiment config and its launcher path (:mod:`.experiment`),
the callbacks every run uses (:mod:`.callbacks`), and which parameters train (:mod:`.trainable`).

Names are imported lazily so that ``olmo-flex --help`` does not load torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "ExperimentConfig": "experiment",
    "load_experiment": "experiment",
    "train": "experiment",
    "build_model": "experiment",
    "FlexCheckpointerCallback": "callbacks",
    "FlexWandBCallback": "callbacks",
    "MetricsLogCallback": "callbacks",
    "read_metrics": "callbacks",
    "NON_MOE_PARAMS": "trainable",
    "ROUTER_PARAMS": "trainable",
    "ROUTER_ONLY_FREEZE": "trainable",
    "RouterOnlyCheck": "trainable",
    "TrainableExpertsCallback": "trainable",
    "expert_freeze_patterns": "trainable",
    "set_trainable_experts": "trainable",
    "tolerate_wrappers": "trainable",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
