"""Modules: the variable-width MoE and its router (FlexOlmo expert bias, expert opt-out)."""

from .moe import (
    ExpertProbe,
    ExpertRouting,
    VariableExperts,
    VariableMoE,
    VariableMoEConfig,
    VariableMoEMLP,
    validate_widths,
    variable_moe_config,
)
from .router import FlexRouter, FlexRouterConfig

__all__ = [
    "ExpertProbe",
    "ExpertRouting",
    "FlexRouter",
    "FlexRouterConfig",
    "VariableExperts",
    "VariableMoE",
    "VariableMoEConfig",
    "VariableMoEMLP",
    "validate_widths",
    "variable_moe_config",
]
