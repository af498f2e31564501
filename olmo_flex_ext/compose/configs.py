"""Editing the MoE settings of every layer of a model config (base block and block overrides)."""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import TransformerBlockConfig, TransformerConfig

from ..nn.moe import VariableMoEConfig, validate_widths
from ..nn.router import active_experts

__all__ = ["map_moe_configs", "moe_configs", "with_top_k", "with_opt_out", "num_experts"]


def moe_configs(config: TransformerConfig) -> List[VariableMoEConfig]:
    """The MoE config of every layer, in layer order."""
    out = []
    for i, block in enumerate(config.resolved_block_configs):
        moe = block.feed_forward_moe
        if not isinstance(moe, VariableMoEConfig):
            raise OLMoConfigurationError(
                f"layer {i} has no variable-width MoE (feed_forward_moe={type(moe).__name__})"
            )
        out.append(moe)
    return out


def num_experts(config: TransformerConfig) -> int:
    """Number of experts per layer (the same in every layer)."""
    return moe_configs(config)[0].num_experts


def map_moe_configs(
    config: TransformerConfig, fn: Callable[[VariableMoEConfig], VariableMoEConfig]
) -> TransformerConfig:
    """A copy of ``config`` with ``fn`` applied to the MoE config of the base block and of every
    block override (``fn`` gets a copy it may change and returns the new config)."""
    if not isinstance(config.block, TransformerBlockConfig) or config.block_pattern:
        raise OLMoConfigurationError("MoE settings can only be changed on single-block-type models")
    config = config.copy()
    blocks = [config.block] + list((config.block_overrides or {}).values())
    for block in blocks:
        moe = block.feed_forward_moe
        if not isinstance(moe, VariableMoEConfig):
            raise OLMoConfigurationError(
                f"the model's MoE is {type(moe).__name__}, not a VariableMoEConfig"
            )
        block.feed_forward_moe = fn(dataclasses.replace(moe, router=moe.router.copy()))
    return config


def with_top_k(config: TransformerConfig, top_k: int) -> TransformerConfig:
    """A copy of ``config`` routing each token to ``top_k`` experts in every layer."""

    def set_top_k(moe: VariableMoEConfig) -> VariableMoEConfig:
        validate_widths(moe.expert_widths, moe.num_experts, top_k)
        moe.router.top_k = top_k
        return moe

    return map_moe_configs(config, set_top_k)


def with_opt_out(config: TransformerConfig, experts: Optional[Sequence[int]]) -> TransformerConfig:
    """A copy of ``config`` with ``experts`` switched off in every layer (``None``/empty: all on).

    The model built from it computes exactly what the model without those experts computes (each
    layer routes over the remaining experts with ``top_k = min(top_k, remaining)``).
    """
    off = sorted(int(e) for e in experts or [])

    def set_opt_out(moe: VariableMoEConfig) -> VariableMoEConfig:
        active_experts(moe.num_experts, off)
        moe.opt_out = off or None
        return moe

    return map_moe_configs(config, set_opt_out)
