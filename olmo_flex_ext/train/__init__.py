"""Training helpers shared by train configs: which parameters train."""

from .trainable import (
    NON_MOE_PARAMS,
    ROUTER_PARAMS,
    TrainableExpertsCallback,
    expert_freeze_patterns,
    set_trainable_experts,
    tolerate_wrappers,
    train_only_experts,
)

__all__ = [
    "NON_MOE_PARAMS",
    "ROUTER_PARAMS",
    "TrainableExpertsCallback",
    "expert_freeze_patterns",
    "set_trainable_experts",
    "tolerate_wrappers",
    "train_only_experts",
]
