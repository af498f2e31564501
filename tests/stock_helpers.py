"""Stock OLMo-core MoE models for the stock checkpoint tests, and what they compute on CPU.

OLMo-core's MoE routes tokens to experts with CUDA kernels, so its forward pass cannot run here.
:func:`reference_logits` runs the stock model with OLMo-core's own router, attention and norms,
and computes the experts with a per-expert loop over the weight views OLMo-core's ``MoEMLP`` and
``DroplessMoEMLP`` use, in place of the CUDA dispatch. It is written independently of
``olmo_flex_ext.stock`` (no shared code), so it is the oracle for the conversions.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from hf_helpers import randomize
from olmo_core.nn.moe.mlp import MoEMLP
from olmo_core.nn.transformer import TransformerConfig

VOCAB = 128


def stock_config(
    layout: str,
    *,
    experts: int = 2,
    top_k: int = 2,
    d_model: int = 32,
    hidden: int = 48,
    layers: int = 2,
    vocab: int = VOCAB,
    **moe,
) -> TransformerConfig:
    """A stock OLMo-core MoE config (FlexOlmo's blocks: reordered norm, QK-norm), MoE type
    ``layout`` (``default`` or ``dropless``); ``moe``: other ``MoEConfig`` fields."""
    config = TransformerConfig.llama_like_moe(
        d_model=d_model,
        vocab_size=vocab,
        n_layers=layers,
        n_heads=4,
        num_experts=experts,
        top_k=top_k,
        expert_hidden_size=hidden,
        dropless=layout == "dropless",
        reordered_norm=True,
        qk_norm=True,
    )
    for k, v in moe.items():
        setattr(config.block.feed_forward_moe, k, v)
    return config


def stock_model(config: TransformerConfig, seed: int = 0) -> torch.nn.Module:
    """OLMo-core's own model for ``config``, built on CPU with random weights."""
    return randomize(config.build(init_device="cpu"), seed).eval()


def save_stock(model: torch.nn.Module, config: TransformerConfig, out: Path, optim=None) -> Path:
    """A model-only checkpoint written with OLMo-core's checkpoint functions: its DCP of the
    model (and optimizer) plus ``config.json`` with the model config under ``"model"``."""
    from olmo_core.distributed.checkpoint import save_model_and_optim_state

    save_model_and_optim_state(str(out), model, optim)
    (out / "config.json").write_text(json.dumps({"model": config.as_config_dict()}))
    return out


class Dropped(Exception):
    pass


def _per_expert_loop(experts, x, expert_weights, expert_indices, batch_size_per_expert):
    """OLMo-core's ParallelMLP/ParallelDroplessMLP forward as a loop over experts."""
    del batch_size_per_expert
    mlp = experts.mlp
    E, d, h = mlp.num_experts, mlp.d_model, mlp.hidden_size
    if isinstance(mlp, MoEMLP):  # MoEMLP.forward: bmm(x, w1), w1 viewed (E, d_model, hidden)
        w1, w3 = mlp.w1.view(E, d, h), mlp.w3.view(E, d, h)
        w2 = mlp.w2.view(E, h, d)

        def up(w, xe):
            return xe @ w
    else:  # DroplessMoEMLP.forward: gmm(x, w1, trans_b=True), w1 viewed (E, hidden, d_model)
        w1, w3 = mlp.w1.view(E, h, d), mlp.w3.view(E, h, d)
        w2 = mlp.w2.view(E, h, d)

        def up(w, xe):
            return xe @ w.t()

    shape = x.shape
    x = x.reshape(-1, d)
    top_k = expert_indices.shape[-1]
    weights = expert_weights.reshape(-1, top_k)
    indices = expert_indices.reshape(-1, top_k)
    # The default type keeps at most `capacity` tokens per expert and drops the rest.
    capacity = experts.expert_capacity(x.shape[0]) if isinstance(mlp, MoEMLP) else None
    out = torch.zeros_like(x)
    for e in range(E):
        tokens, slots = (indices == e).nonzero(as_tuple=True)
        if capacity is not None and tokens.numel() > capacity:
            raise Dropped(f"expert {e} gets {tokens.numel()} tokens, capacity {capacity}")
        xe = x[tokens]
        ye = (F.silu(up(w1[e], xe)) * up(w3[e], xe)) @ w2[e]
        out.index_add_(0, tokens, ye * weights[tokens, slots].unsqueeze(-1).to(ye.dtype))
    return out.view(shape)


@torch.no_grad()
def reference_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the stock model computes for ``x`` (raises :class:`Dropped` if the default type
    would drop a token for lack of capacity, where it differs from a dropless MoE)."""
    for block in model.blocks.values():
        experts = block.feed_forward_moe.experts
        experts.forward = types.MethodType(_per_expert_loop, experts)
    try:
        return model(x).float()
    finally:
        for block in model.blocks.values():
            del block.feed_forward_moe.experts.forward


def is_expert(name: str) -> bool:
    return ".feed_forward_moe.experts.mlp.w" in name


def variable_rows(
    name: str, stored: torch.Tensor, layout: str, experts: int, hidden: int
) -> torch.Tensor:
    """The variable-width tensor (expert e's rows (hidden, d_model) in turn) of a stock-stored
    expert weight, by the views OLMo-core's MoEMLP / DroplessMoEMLP take of it."""
    d = stored.numel() // (experts * hidden)
    if layout == "default" and not name.endswith("w2"):
        per_expert = [w.t() for w in stored.view(experts, d, hidden)]  # x @ w1[e] = x @ (w1[e].T).T
    else:
        per_expert = list(stored.view(experts, hidden, d))
    return torch.cat(per_expert)


def stock_storage(
    name: str, rows: torch.Tensor, layout: str, experts: int, hidden: int
) -> torch.Tensor:
    """The inverse of :func:`variable_rows` (equal widths)."""
    d = rows.shape[1]
    per_expert = rows.view(experts, hidden, d)
    if layout == "default" and not name.endswith("w2"):
        return torch.stack([w.t() for w in per_expert]).reshape(experts * d, hidden)
    return per_expert.reshape(experts * hidden, d)
