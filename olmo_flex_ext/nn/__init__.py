"""Modules: the variable-width MoE (and, with the composition work, routers and opt-out)."""

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

__all__ = [
    "ExpertProbe",
    "ExpertRouting",
    "VariableExperts",
    "VariableMoE",
    "VariableMoEConfig",
    "VariableMoEMLP",
    "validate_widths",
    "variable_moe_config",
]
