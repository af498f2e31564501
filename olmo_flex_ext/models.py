"""Model configs: named FlexOlmo configs (experts of any width, at 7B scale and tiny for CPU) and
every transform of a model config.

Every config is an OLMo-core :class:`TransformerConfig` whose blocks use
:class:`~olmo_flex_ext.nn.moe.VariableMoEConfig`. Widths are given either as one list for all layers
(``[11008, 5504]``) or as one list per layer (``[[11008, 5504], [11008, 4096], ...]``); layers whose
widths differ from layer 0 become OLMo-core ``block_overrides``.

Get a config by function (``flex_olmo_2x7b(domain_width=5504)``) or by name through
:func:`get_model_config` (``"flex-2x7b-5504"``, ``"tiny-flex"``), which the CLI and train configs use.

Transforms follow one naming rule: ``with_*`` / ``without_*`` return a changed copy and never edit
their argument (:func:`with_expert_widths`, :func:`with_top_k`, :func:`with_opt_out`,
:func:`without_experts`, :func:`map_moe_configs`); readers (:func:`moe_configs`,
:func:`expert_widths_per_layer`, :func:`num_experts`) change nothing.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Optional, Sequence, Union

from olmo_core.config import DType
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import TransformerBlockConfig, TransformerConfig

from .errors import UserError
from .nn.moe import VariableMoEConfig, validate_widths, variable_moe_config
from .nn.router import FlexRouterConfig, active_experts

__all__ = [
    "Widths",
    "FLEX_7B",
    "flex_olmo",
    "flex_olmo_2x7b",
    "flex_olmo_7b_experts",
    "tiny_flex",
    "get_model_config",
    "model_names",
    "olmo2_dense",
    "per_layer_widths",
    "moe_configs",
    "num_experts",
    "expert_widths_per_layer",
    "map_moe_configs",
    "with_expert_widths",
    "with_top_k",
    "with_expert_bias",
    "with_opt_out",
    "without_experts",
    "describe_model",
    "count_text",
]

Widths = Union[Sequence[int], Sequence[Sequence[int]]]
"""One width list for all layers, or one width list per layer."""

FLEX_7B = dict(
    d_model=4096,
    n_layers=32,
    n_heads=32,
    vocab_size=100352,
    rope_theta=500_000,
    layer_norm_eps=1e-6,
)
"""Shape of FlexOlmo's 7B public model (dolma2 tokenizer padded to 100352)."""

PUBLIC_WIDTH_7B = 11008


def per_layer_widths(widths: Widths, n_layers: int) -> List[List[int]]:
    """One width list per layer from one list for all layers or one list per layer."""
    if len(widths) > 0 and isinstance(widths[0], (list, tuple)):
        per_layer = [list(w) for w in widths]  # type: ignore[arg-type]
        if len(per_layer) != n_layers:
            raise OLMoConfigurationError(
                f"per-layer expert widths cover {len(per_layer)} layers but the model has "
                f"{n_layers}; give one width list per layer or one list for all layers"
            )
        return per_layer
    return [list(widths) for _ in range(n_layers)]  # type: ignore[arg-type]


def flex_olmo(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    vocab_size: int,
    expert_widths: Widths,
    top_k: Optional[int] = None,
    rope_theta: int = 500_000,
    layer_norm_eps: float = 1e-6,
    lb_loss_weight: Optional[float] = 0.01,
    z_loss_weight: Optional[float] = 0.001,
    dtype: DType = DType.float32,
) -> TransformerConfig:
    """A FlexOlmo transformer: OLMo-2 blocks (post-norm, QK-norm, RoPE, no biases, untied
    embeddings) whose MLP is a :class:`VariableMoEConfig`. ``top_k`` defaults to all experts."""
    per_layer = per_layer_widths(expert_widths, n_layers)
    num_experts = len(per_layer[0])
    if any(len(w) != num_experts for w in per_layer):
        raise OLMoConfigurationError(
            "every layer must have the same number of experts; got widths "
            f"{[len(w) for w in per_layer]} experts per layer"
        )
    top_k = num_experts if top_k is None else top_k

    def moe(widths: List[int]) -> VariableMoEConfig:
        return variable_moe_config(
            widths, top_k, lb_loss_weight=lb_loss_weight, z_loss_weight=z_loss_weight, dtype=dtype
        )

    base = TransformerConfig.llama_like_moe(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab_size,
        num_experts=num_experts,
        top_k=top_k,
        expert_hidden_size=max(per_layer[0]),
        reordered_norm=True,
        qk_norm=True,
        rope_theta=rope_theta,
        layer_norm_eps=layer_norm_eps,
        lb_loss_weight=lb_loss_weight,
        z_loss_weight=z_loss_weight,
        dtype=dtype,
    )
    assert isinstance(base.block, TransformerBlockConfig)
    base.block.feed_forward_moe = moe(per_layer[0])
    return with_expert_widths(base, per_layer)


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


def expert_widths_per_layer(config: TransformerConfig) -> List[List[int]]:
    """The expert widths of every layer of a model config."""
    return [list(moe.expert_widths) for moe in moe_configs(config)]


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


def with_expert_bias(config: TransformerConfig) -> TransformerConfig:
    """A copy of ``config`` whose routers have FlexOlmo's never-positive expert bias."""

    def set_bias(moe: VariableMoEConfig) -> VariableMoEConfig:
        moe.router = dataclasses.replace(
            FlexRouterConfig.from_router_config(moe.router), expert_bias=True
        )
        return moe

    return map_moe_configs(config, set_bias)


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


def without_experts(config: TransformerConfig, experts: Sequence[int]) -> TransformerConfig:
    """A copy of ``config`` with ``experts`` removed: widths without them, ``top_k =
    min(top_k, remaining)``, no opt-out."""
    keep = active_experts(num_experts(config), experts)
    if 0 in experts and any(getattr(m.router, "expert_bias", False) for m in moe_configs(config)):
        raise UserError(
            "cannot drop the public expert 0 of a router with an expert bias (the bias is defined "
            "relative to it); switch it off with opt-out instead of --drop"
        )
    widths = [[w[e] for e in keep] for w in expert_widths_per_layer(config)]

    def fix(moe: VariableMoEConfig) -> VariableMoEConfig:
        moe.router.top_k = min(moe.router.top_k, len(keep))
        moe.opt_out = None
        return moe

    return with_expert_widths(map_moe_configs(config, fix), widths)


def with_expert_widths(config: TransformerConfig, expert_widths: Widths) -> TransformerConfig:
    """A copy of ``config`` with new expert widths (one list, or one list per layer).

    The number of experts and everything else stay as they are; layers whose widths differ from
    layer 0's become ``block_overrides``.
    """
    per_layer = per_layer_widths(expert_widths, config.n_layers)
    if not isinstance(config.block, TransformerBlockConfig) or config.block_pattern:
        raise OLMoConfigurationError("expert widths can only be set on single-block-type models")
    config = config.copy()
    overrides = config.block_overrides or {}
    base_block = config.block
    assert isinstance(base_block, TransformerBlockConfig)
    base_moe = base_block.feed_forward_moe
    if base_moe is None:
        raise OLMoConfigurationError("the model has no MoE layers to set expert widths on")

    def moe_with(widths: List[int], like: VariableMoEConfig) -> VariableMoEConfig:
        return dataclasses.replace(
            like,
            expert_widths=list(widths),
            num_experts=len(widths),
            hidden_size=max(widths) if widths else 0,
        )

    assert isinstance(base_moe, VariableMoEConfig)
    base_block.feed_forward_moe = moe_with(per_layer[0], base_moe)
    new_overrides: Dict[int, TransformerBlockConfig] = {}
    for i, widths in enumerate(per_layer):
        block = overrides.get(i)
        if block is None and widths == per_layer[0]:
            continue
        block = (block or base_block).copy()
        like = block.feed_forward_moe
        assert isinstance(like, VariableMoEConfig)
        block.feed_forward_moe = moe_with(widths, like)
        new_overrides[i] = block
    config.block_overrides = new_overrides or None
    return config


def flex_olmo_7b_experts(expert_widths: Widths, top_k: Optional[int] = None) -> TransformerConfig:
    """FlexOlmo at 7B scale with any number of experts, each with its own width."""
    return flex_olmo(**FLEX_7B, expert_widths=expert_widths, top_k=top_k)  # type: ignore[arg-type]


def flex_olmo_2x7b(domain_width: Union[int, Sequence[int]] = PUBLIC_WIDTH_7B) -> TransformerConfig:
    """Flex-math-2x7B-1T's architecture: the public expert at 11008 and the domain expert at
    ``domain_width`` (one int, or one int per layer), top-2 of 2."""
    if isinstance(domain_width, int):
        widths: Widths = [PUBLIC_WIDTH_7B, domain_width]
    else:
        widths = [[PUBLIC_WIDTH_7B, w] for w in domain_width]
    return flex_olmo_7b_experts(widths)


def tiny_flex(
    expert_widths: Widths = (256, 128),
    *,
    top_k: Optional[int] = None,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    vocab_size: int = 512,
) -> TransformerConfig:
    """A FlexOlmo small enough to train on a laptop CPU in seconds."""
    return flex_olmo(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab_size,
        expert_widths=expert_widths,
        top_k=top_k,
    )


_NAMED: Dict[str, Callable[[], TransformerConfig]] = {
    "flex-2x7b": lambda: flex_olmo_2x7b(),
    "tiny-flex": lambda: tiny_flex(),
}


def model_names() -> List[str]:
    """Names :func:`get_model_config` understands (``flex-2x7b-<width>`` takes any width)."""
    return sorted(_NAMED) + ["flex-2x7b-<domain width>", "tiny-flex-<w0>x<w1>[x...]"]


def get_model_config(name: str) -> TransformerConfig:
    """A model config by name: ``flex-2x7b``, ``flex-2x7b-5504``, ``tiny-flex``,
    ``tiny-flex-256x64x32`` (tiny model with three experts of those widths)."""
    if name in _NAMED:
        return _NAMED[name]()
    if m := re.fullmatch(r"flex-2x7b-(\d+)", name):
        return flex_olmo_2x7b(int(m.group(1)))
    if m := re.fullmatch(r"tiny-flex-(\d+(?:x\d+)+)", name):
        return tiny_flex([int(w) for w in m.group(1).split("x")])
    raise OLMoConfigurationError(f"unknown model name {name!r}; known: {', '.join(model_names())}")


def olmo2_dense(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    vocab_size: int,
    hidden_size: int,
    rope_theta: int = 500_000,
    layer_norm_eps: float = 1e-6,
    dtype: DType = DType.float32,
) -> TransformerConfig:
    """A dense OLMo-2 transformer with the same blocks as :func:`flex_olmo` (post-norm, QK-norm,
    RoPE, no biases, untied embeddings) and one SwiGLU MLP of ``hidden_size`` per layer: the shape
    of FlexOlmo's public model, which upcycling turns into the public expert plus new experts."""
    from olmo_core.nn.feed_forward import FeedForwardConfig
    from olmo_core.nn.transformer import TransformerBlockType

    return TransformerConfig.llama_like(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab_size,
        block_name=TransformerBlockType.reordered_norm,
        qk_norm=True,
        rope_theta=rope_theta,
        layer_norm_eps=layer_norm_eps,
        feed_forward=FeedForwardConfig(hidden_size=hidden_size, bias=False, dtype=dtype),
        dtype=dtype,
    )


def count_text(n: int) -> str:
    """``9.46B`` or ``0.64M``: a parameter count for people."""
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def describe_model(model: TransformerConfig) -> str:
    """Parameter counts and, for variable-width MoE models, the expert widths per layer."""
    lines = [
        f"total params:  {count_text(model.num_params)} ({model.num_params:,d})",
        f"active params: {count_text(model.num_active_params)} ({model.num_active_params:,d})",
    ]
    try:
        per_layer = expert_widths_per_layer(model)
    except OLMoConfigurationError:  # a model without variable-width MoE layers
        return "\n".join(lines)
    runs: List[str] = []
    start = 0
    for i in range(1, len(per_layer) + 1):
        if i == len(per_layer) or per_layer[i] != per_layer[start]:
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            runs.append(f"  layers {span}: {per_layer[start]}")
            start = i
    return "\n".join(lines + ["expert widths:"] + runs)
