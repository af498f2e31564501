"""Training helpers shared by train configs: which parameters train."""

from .trainable import (
    TrainableExpertsCallback,
    expert_freeze_patterns,
    shared_moe_patterns,
    train_only_experts,
)

__all__ = [
    "TrainableExpertsCallback",
    "expert_freeze_patterns",
    "shared_moe_patterns",
    "train_only_experts",
]
