"""Training helpers shared by train configs: which parameters train."""

from .trainable import (
    NON_MOE_PARAMS,
    ROUTER_PARAMS,
    TrainableExpertsCallback,
    expert_freeze_patterns,
    shared_moe_patterns,
    train_only_experts,
)

__all__ = [
    "NON_MOE_PARAMS",
    "ROUTER_PARAMS",
    "TrainableExpertsCallback",
    "expert_freeze_patterns",
    "shared_moe_patterns",
    "train_only_experts",
]
