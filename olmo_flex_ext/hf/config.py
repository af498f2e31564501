"""Model configs between transformers (FlexOlmo, Olmo2) and OLMo-core (:mod:`olmo_flex_ext.models`).

OLMo-core's own ``olmo_core.nn.hf.get_hf_config`` needs a built model whose experts are its own
``MoEMLP`` classes and has one width for all experts, so the FlexOlmo config is built here from our
model config: ``intermediate_size`` is the widest expert of the whole model, and the true widths
per layer ride along as ``olmo_flex_expert_widths`` (transformers keeps unknown config keys), which
lets :func:`~olmo_flex_ext.hf.import_hf` restore them exactly.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from olmo_core.nn.feed_forward import FeedForwardConfig
from olmo_core.nn.moe.router import MoERouterGatingFunction
from olmo_core.nn.rope import RoPEType
from olmo_core.nn.transformer import (
    TransformerBlockConfig,
    TransformerBlockType,
    TransformerConfig,
)

from ..checkpoint import CheckpointError
from ..models import expert_widths_per_layer, flex_olmo
from ..nn.moe import VariableMoEConfig

__all__ = [
    "WIDTHS_KEY",
    "flex_olmo_hf_config",
    "model_config_from_hf",
    "block_configs",
    "hf_token_ids",
]

WIDTHS_KEY = "olmo_flex_expert_widths"
"""FlexOlmo config.json key holding the true expert widths per layer of a zero-padded export."""

TOKEN_KEYS = ("pad_token_id", "eos_token_id", "bos_token_id", "max_position_embeddings")


def block_configs(config: TransformerConfig) -> List[TransformerBlockConfig]:
    """The block config and every block override (to change a setting on all layers)."""
    blocks = [config.block] + list((config.block_overrides or {}).values())
    if not all(isinstance(b, TransformerBlockConfig) for b in blocks) or config.block_pattern:
        raise CheckpointError("only models with one kind of transformer block are supported")
    return blocks  # type: ignore[return-value]


def _rope_theta(hf: Any) -> int:
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise CheckpointError(
            f"RoPE type {rope_type!r} (rope scaling) is not supported; only plain RoPE is"
        )
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10_000))
    return int(theta) if float(theta).is_integer() else theta


def _check_common(hf: Any) -> None:
    problems = []
    if getattr(hf, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf.hidden_act!r} (only silu)")
    if getattr(hf, "attention_bias", False):
        problems.append("attention_bias=true (biases are not supported)")
    if getattr(hf, "tie_word_embeddings", False):
        problems.append("tie_word_embeddings=true (untied embeddings only)")
    head_dim = getattr(hf, "head_dim", None)
    if head_dim is not None and head_dim * hf.num_attention_heads != hf.hidden_size:
        problems.append(f"head_dim={head_dim} != hidden_size / num_attention_heads")
    if problems:
        raise CheckpointError(f"unsupported {hf.model_type} config: " + "; ".join(problems))


def _set_kv_heads(config: TransformerConfig, hf: Any) -> None:
    n_kv = getattr(hf, "num_key_value_heads", None)
    if n_kv is not None and n_kv != hf.num_attention_heads:
        for block in block_configs(config):
            block.sequence_mixer.n_kv_heads = n_kv  # type: ignore[union-attr]


def model_config_from_hf(
    hf: Any, expert_widths: Optional[List[List[int]]] = None
) -> TransformerConfig:
    """Our model config for a transformers ``FlexOlmoConfig`` (a variable-width MoE model) or
    ``Olmo2Config`` (a dense OLMo-2 model). ``expert_widths`` (per layer) overrides FlexOlmo's one
    ``intermediate_size`` for all experts."""
    _check_common(hf)
    if hf.model_type == "olmo2":
        config = TransformerConfig.llama_like(
            d_model=hf.hidden_size,
            vocab_size=hf.vocab_size,
            n_layers=hf.num_hidden_layers,
            n_heads=hf.num_attention_heads,
            block_name=TransformerBlockType.reordered_norm,
            qk_norm=True,
            rope_theta=_rope_theta(hf),
            layer_norm_eps=hf.rms_norm_eps,
            feed_forward=FeedForwardConfig(hidden_size=hf.intermediate_size, bias=False),
        )
    elif hf.model_type == "flex_olmo":
        widths = expert_widths or [[hf.intermediate_size] * hf.num_experts] * hf.num_hidden_layers
        config = flex_olmo(
            d_model=hf.hidden_size,
            n_layers=hf.num_hidden_layers,
            n_heads=hf.num_attention_heads,
            vocab_size=hf.vocab_size,
            expert_widths=widths,
            top_k=hf.num_experts_per_tok,
            rope_theta=_rope_theta(hf),
            layer_norm_eps=hf.rms_norm_eps,
            lb_loss_weight=getattr(hf, "router_aux_loss_coef", 0.01),
        )
        if getattr(hf, "norm_topk_prob", False):
            for block in block_configs(config):
                assert block.feed_forward_moe is not None
                block.feed_forward_moe.router.normalize_expert_weights = 1.0
    else:
        raise CheckpointError(
            f"model type {hf.model_type!r} is not supported (FlexOlmo or Olmo2 only)"
        )
    _set_kv_heads(config, hf)
    return config


def hf_token_ids(hf: Any) -> Dict[str, Any]:
    """Token ids and context length of a transformers config (kept with imported checkpoints)."""
    return {k: getattr(hf, k, None) for k in TOKEN_KEYS}


def _export_problems(config: TransformerConfig) -> List[str]:
    problems = []
    blocks = config.resolved_block_configs
    first = blocks[0]
    for i, block in enumerate(blocks):
        moe, att = block.feed_forward_moe, block.sequence_mixer
        where = f"layer {i}"
        if block.name != TransformerBlockType.moe_reordered_norm:
            problems.append(f"{where}: block {block.name} (FlexOlmo needs moe_reordered_norm)")
        if not isinstance(moe, VariableMoEConfig):
            problems.append(f"{where}: MoE {type(moe).__name__} (VariableMoEConfig needed)")
            continue
        router = moe.router
        if router.gating_function != MoERouterGatingFunction.softmax or router.bias_gamma:
            problems.append(f"{where}: router is not a plain softmax router")
        if moe.opt_out:
            problems.append(
                f"{where}: experts {moe.opt_out} are switched off (export the model without them: "
                "olmo-flex opt-out --drop)"
            )
        if getattr(router, "expert_bias", False):
            problems.append(f"{where}: router has an expert bias (transformers' FlexOlmo has none)")
        if router.uniform_expert_assignment or router.random_expert_assignment:
            problems.append(f"{where}: router assigns experts uniformly/randomly")
        if router.normalize_expert_weights not in (None, 1.0):
            problems.append(f"{where}: normalize_expert_weights={router.normalize_expert_weights}")
        if att.rope is None or att.rope.name != RoPEType.default or att.rope.scaling is not None:
            problems.append(f"{where}: attention without plain RoPE")
        if att.qk_norm is None or att.use_head_qk_norm or att.bias or att.gate is not None:
            problems.append(f"{where}: attention is not OLMo-2 style (full-width QK-norm, no bias)")
        if i > 0 and (
            att.n_heads != first.sequence_mixer.n_heads
            or att.n_kv_heads != first.sequence_mixer.n_kv_heads
            or att.rope != first.sequence_mixer.rope
            or moe.router != first.feed_forward_moe.router  # type: ignore[union-attr]
            or block.layer_norm != first.layer_norm
        ):
            problems.append(f"{where}: attention, norm or router settings differ from layer 0")
    if config.tie_word_embeddings or config.embedding_norm is not None or config.embed_scale:
        problems.append("tied, normalised or scaled embeddings")
    if config.lm_head.bias:
        problems.append("output layer with bias")
    return problems


def flex_olmo_hf_config(
    config: TransformerConfig,
    *,
    pad_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    bos_token_id: Optional[int] = None,
    max_position_embeddings: Optional[int] = None,
    dtype: Optional[str] = None,
):
    """The transformers ``FlexOlmoConfig`` that computes the same function as ``config`` once
    narrower experts are zero-padded to the widest width of the model."""
    from transformers import FlexOlmoConfig

    problems = _export_problems(config)
    if problems:
        raise CheckpointError(
            "this model cannot be written as a transformers FlexOlmo: " + "; ".join(problems)
        )
    block = config.resolved_block_configs[0]
    att, moe = block.sequence_mixer, block.feed_forward_moe
    assert isinstance(moe, VariableMoEConfig) and att.rope is not None
    widths = expert_widths_per_layer(config)
    width = max(max(w) for w in widths)
    extra: Dict[str, Any] = {}
    if any(w != width for layer in widths for w in layer):
        extra[WIDTHS_KEY] = widths
    return FlexOlmoConfig(
        architectures=["FlexOlmoForCausalLM"],
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=width,
        num_hidden_layers=config.n_layers,
        num_attention_heads=att.n_heads,
        num_key_value_heads=att.n_kv_heads or att.n_heads,
        max_position_embeddings=max_position_embeddings or 4096,
        rms_norm_eps=block.layer_norm.eps if block.layer_norm else 1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": float(att.rope.theta)},
        attention_bias=False,
        tie_word_embeddings=False,
        num_experts=moe.num_experts,
        num_experts_per_tok=moe.router.top_k,
        norm_topk_prob=moe.router.normalize_expert_weights == 1.0,
        router_aux_loss_coef=moe.lb_loss_weight or 0.0,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        dtype=dtype,
        **extra,
    )
