"""Grow a dense OLMo-2-style model into a variable-width MoE whose experts are copies of its MLP.

This is how FlexOlmo starts a new expert: every expert begins as the public model's MLP, the router
gets one row per expert. With ``top_k == num_experts`` the router probabilities of identical
experts sum to one, so the upcycled model computes exactly the dense model's function; with
``top_k < num_experts`` each MLP output is scaled by the sum of the chosen experts' probabilities.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from olmo_core.nn.feed_forward import FeedForwardConfig
from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig, TransformerType

from ..checkpoint import (
    CheckpointError,
    LazyTensor,
    check_output,
    lazy_state,
    read_model_config,
    save_model,
)
from ..models import Widths, per_layer_widths, with_expert_bias, with_expert_widths
from ..nn.moe import variable_moe_config
from ..progress import progress_bar
from .config import block_configs, hf_token_ids
from .convert import hf_lazy_state
from .files import is_hf_dir, reporting
from .state import EXPERT_RE, check_state, experts_from_hf

__all__ = ["upcycle", "moe_config_from_dense", "router_rows", "router_bias", "ROUTER_INIT_STD"]

ROUTER_INIT_STD = 0.02
"""Standard deviation of random router rows (OLMo-core's default init std)."""

_DENSE_MLP = re.compile(r"^blocks\.(\d+)\.feed_forward\.(w[123])\.weight$")
RouterFrom = Union[str, Path, torch.Tensor, None]


def open_dense(dense: Union[str, Path]) -> Tuple[TransformerConfig, Dict[str, LazyTensor], dict]:
    """(model config, lazy state, provenance) of a dense OLMo-2-style model: an OLMo-core
    checkpoint (model-only, trainer ``stepN/`` or run folder) or a transformers Olmo2 directory."""
    path = Path(dense)
    info: dict = {"source": str(path.resolve())}
    if is_hf_dir(path):
        hf_config, config, state = hf_lazy_state(path)
        if hf_config.model_type != "olmo2":
            raise CheckpointError(
                f"{path} is a {hf_config.model_type!r} model; upcycle needs a dense Olmo2 model"
                + (
                    " (a FlexOlmo model is already a MoE: use import-hf)"
                    if hf_config.model_type == "flex_olmo"
                    else ""
                )
            )
        info["hf"] = hf_token_ids(hf_config)
        return config, state, info
    config = read_model_config(path)
    state = lazy_state(path)
    check_state(state, config, f"checkpoint {path}")
    return config, state, info


def moe_config_from_dense(
    dense: TransformerConfig, expert_widths: Widths, top_k: Optional[int] = None
) -> TransformerConfig:
    """The variable-width MoE config with ``dense``'s attention, norms and embeddings and one
    expert per width (one width list, or one per layer); ``top_k`` defaults to all experts."""
    blocks = block_configs(dense)
    problems = [
        b.name
        for b in blocks
        if b.name != TransformerBlockType.reordered_norm
        or not isinstance(b.feed_forward, FeedForwardConfig)
        or b.feed_forward_moe is not None
    ]
    if problems:
        raise CheckpointError(
            f"upcycle needs a dense OLMo-2-style model (reordered_norm blocks with an MLP); "
            f"this one has {problems[0]} blocks"
        )
    per_layer = per_layer_widths(expert_widths, dense.n_layers)
    num_experts = len(per_layer[0])
    ff = blocks[0].feed_forward
    assert ff is not None
    top_k = num_experts if top_k is None else top_k
    moe = variable_moe_config(per_layer[0], top_k, dtype=ff.dtype or dense.dtype)
    config = dense.copy()
    config.name = TransformerType.moe
    for block in block_configs(config):
        block.name = TransformerBlockType.moe_reordered_norm
        block.feed_forward = None
        block.feed_forward_moe = dataclasses.replace(moe)
    return with_expert_widths(config, per_layer)


def router_rows(
    router_from: RouterFrom, n_layers: int, num_experts: int, d_model: int, seed: int = 0
) -> torch.Tensor:
    """Router weights ``(n_layers, num_experts, d_model)``: from ``router_from`` (a tensor of
    shape ``(num_experts, d_model)`` or ``(n_layers, num_experts, d_model)``; a safetensors file
    with key ``router`` of one of those shapes or keys ``layer{i}``; or a MoE checkpoint or
    FlexOlmo directory whose router is copied), else small random values (seeded)."""
    shape = (n_layers, num_experts, d_model)
    if router_from is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=g) * ROUTER_INIT_STD
    if isinstance(router_from, torch.Tensor):
        rows = router_from
    else:
        rows = _router_file(Path(router_from), n_layers)
    rows = rows.float()
    if rows.dim() == 2:
        rows = rows.unsqueeze(0).expand(n_layers, -1, -1)
    if tuple(rows.shape) != shape:
        raise CheckpointError(
            f"router rows from {router_from if not isinstance(router_from, torch.Tensor) else 'tensor'}"
            f" have shape {tuple(rows.shape)}, expected ({num_experts}, {d_model}) or {shape}"
        )
    return rows.contiguous()


def router_bias(router_from: RouterFrom, n_layers: int, num_experts: int) -> Optional[torch.Tensor]:
    """FlexOlmo's expert bias ``(n_layers, num_experts - 1)`` when ``router_from`` is a router
    file that holds one (key ``expert_bias``, as ``olmo-flex domain-router`` writes), else
    ``None``."""
    if not isinstance(router_from, (str, Path)) or not Path(router_from).is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(router_from), "pt") as f:
        if "expert_bias" not in f.keys():
            return None
        bias = f.get_tensor("expert_bias").float()
    if tuple(bias.shape) != (n_layers, num_experts - 1):
        raise CheckpointError(
            f"expert bias in {router_from} has shape {tuple(bias.shape)}, expected "
            f"({n_layers}, {num_experts - 1})"
        )
    if bias.gt(0).any():
        raise CheckpointError(f"expert bias in {router_from} is positive; it must be <= 0")
    return bias.contiguous()


def _router_file(path: Path, n_layers: int) -> torch.Tensor:
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read router rows from {path} ({e})") from e
        if "router" in tensors:
            return tensors["router"]
        layers = [tensors.get(f"layer{i}") for i in range(n_layers)]
        if any(t is None for t in layers):
            raise CheckpointError(
                f"{path} has neither key 'router' nor keys layer0..layer{n_layers - 1}"
            )
        return torch.stack(layers)  # type: ignore[arg-type]
    if not path.exists():
        raise CheckpointError(f"router source {path} does not exist")
    if is_hf_dir(path):
        _, config, state = hf_lazy_state(path)
    else:
        config, state = read_model_config(path), lazy_state(path)
    keys = [f"blocks.{i}.feed_forward_moe.router.weight" for i in range(config.n_layers)]
    if any(k not in state for k in keys):
        raise CheckpointError(f"{path} is not a MoE model, so it has no router to copy")
    return torch.stack([state[k].load().reshape(-1, config.d_model) for k in keys])


def upcycled_state(
    dense: Dict[str, LazyTensor], widths: Sequence[Sequence[int]], router: torch.Tensor
) -> Dict[str, LazyTensor]:
    """The MoE state: dense tensors kept, each layer's MLP copied into every expert (the first
    ``width`` neurons when an expert is narrower), router rows from ``router``."""
    state: Dict[str, LazyTensor] = {}
    for name, t in dense.items():
        m = _DENSE_MLP.match(name)
        if m is None:
            state[name] = t
            continue
        layer, w = int(m.group(1)), m.group(2)
        layer_widths = list(widths[layer])

        def load(t=t, w=w, layer_widths=layer_widths) -> torch.Tensor:
            full = t.load()  # nn.Linear weight: (hidden, d) for w1/w3, (d, hidden) for w2
            parts = [full[:, :n] if w == "w2" else full[:n] for n in layer_widths]
            return experts_from_hf(w, parts)

        d_model = t.shape[1] if w != "w2" else t.shape[0]
        name_out = f"blocks.{layer}.feed_forward_moe.experts.mlp.{w}"
        assert EXPERT_RE.match(name_out)
        state[name_out] = LazyTensor((sum(layer_widths), d_model), t.dtype, load)
    dtype = dense["embeddings.weight"].dtype
    for i in range(router.shape[0]):
        row = router[i].reshape(-1).to(dtype)
        state[f"blocks.{i}.feed_forward_moe.router.weight"] = LazyTensor(
            tuple(row.shape), dtype, lambda row=row: row
        )
    return state


def upcycle(
    dense: Union[str, Path],
    out: Union[str, Path],
    *,
    num_experts: int,
    expert_widths: Optional[Widths] = None,
    router_from: RouterFrom = None,
    seed: int = 0,
    overwrite: bool = False,
    top_k: Optional[int] = None,
) -> Path:
    """Write a model-only checkpoint of a ``num_experts``-expert variable-width MoE grown from a
    dense OLMo-2-style model (OLMo-core checkpoint or transformers Olmo2 directory).

    Every expert is a copy of the dense MLP; ``expert_widths`` (one per expert, or one list per
    layer; default: the dense width) may make an expert narrower, keeping the MLP's first neurons
    (prune by importance afterwards for a better choice). ``top_k`` defaults to all experts."""
    if num_experts < 1:
        raise CheckpointError(f"--experts must be at least 1, got {num_experts}")
    check_output(out, overwrite)
    config, state, info = open_dense(dense)
    hidden = [b.feed_forward.hidden_size for b in config.resolved_block_configs if b.feed_forward]
    widths = _upcycle_widths(expert_widths, num_experts, hidden)
    moe_config = moe_config_from_dense(config, widths, top_k)
    router = router_rows(router_from, config.n_layers, num_experts, config.d_model, seed)
    new_state = upcycled_state(state, widths, router)
    bias = router_bias(router_from, config.n_layers, num_experts)
    if bias is not None:
        moe_config = with_expert_bias(moe_config)
        for i, b in enumerate(bias):
            new_state[f"blocks.{i}.feed_forward_moe.router.expert_bias"] = LazyTensor(
                tuple(b.shape), new_state["embeddings.weight"].dtype, lambda b=b: b
            )
    check_state(new_state, moe_config, "the upcycled model")
    info.update(
        made_by="olmo-flex upcycle",
        num_experts=num_experts,
        expert_widths=widths,
        router_from=str(router_from)
        if isinstance(router_from, (str, Path))
        else (
            "tensor" if router_from is not None else f"random (std {ROUTER_INIT_STD}, seed {seed})"
        ),
    )
    with progress_bar("upcycling", len(new_state), unit="tensors", transient=True) as advance:
        lazy = {k: reporting(k, t, lambda _: advance()) for k, t in new_state.items()}
        return save_model(out, moe_config, lazy, overwrite=overwrite, info=info)


def _upcycle_widths(
    expert_widths: Optional[Widths], num_experts: int, hidden: List[int]
) -> List[List[int]]:
    if not hidden:
        raise CheckpointError("the dense model has no MLP layers to copy into experts")
    if expert_widths is None:
        return [[h] * num_experts for h in hidden]
    per_layer = per_layer_widths(expert_widths, len(hidden))
    for i, (layer, h) in enumerate(zip(per_layer, hidden)):
        if len(layer) != num_experts:
            raise CheckpointError(
                f"{len(layer)} expert widths given for {num_experts} experts; give one per expert"
            )
        if any(w < 1 or w > h for w in layer):
            raise CheckpointError(
                f"expert widths {layer} in layer {i} must be between 1 and the dense MLP width {h}"
            )
    return per_layer
