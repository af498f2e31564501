"""Cutting expert MLPs down to the neurons that are kept.

The expert weights ``blocks.{i}.feed_forward_moe.experts.mlp.w1/w2/w3`` are ``(sum of widths,
d_model)`` with expert 0's rows first; pruning keeps, for every expert, the rows of its kept neurons
in their original order (:func:`slice_expert_rows`). Every other tensor, and the rows of an expert
that keeps all its neurons, come out bitwise unchanged.

One slicing function serves both paths:

- in memory: :func:`prune_state_dict` / :func:`prune_model` (tests, the demo);
- streaming: :func:`prune_checkpoint` reads the source checkpoint one tensor at a time while the
  new model-only checkpoint is written, so pruning a 2x7B model needs memory for about one tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from olmo_core.nn.transformer import Transformer, TransformerConfig

from ..checkpoint import LazyTensor, lazy_state, read_model_config, save_model
from ..models import expert_widths_per_layer, with_expert_widths
from ..nn.moe import EXPERT_WEIGHT_RE

__all__ = [
    "EXPERT_WEIGHT_RE",
    "expert_weight_layer",
    "slice_expert_rows",
    "pruned_widths",
    "prune_state_dict",
    "prune_model",
    "prune_checkpoint",
    "check_keep",
]


Keep = Sequence[Sequence[torch.Tensor]]
"""Per layer, per expert: ascending indices of the neurons to keep."""


def expert_weight_layer(name: str) -> Optional[int]:
    """The layer of an expert weight (``w1``/``w2``/``w3``), else ``None``."""
    m = EXPERT_WEIGHT_RE.match(name)
    return int(m.group(1)) if m else None


def pruned_widths(keep: Keep) -> List[List[int]]:
    return [[int(k.numel()) for k in layer] for layer in keep]


def check_keep(widths: Sequence[Sequence[int]], keep: Keep) -> None:
    """Raise ValueError unless ``keep`` holds, per layer and expert, distinct ascending in-range
    indices (at least one per expert)."""
    if len(keep) != len(widths):
        raise ValueError(f"keep indices for {len(keep)} layers, the model has {len(widths)}")
    for i, (ws, ks) in enumerate(zip(widths, keep)):
        if len(ks) != len(ws):
            raise ValueError(f"layer {i}: keep indices for {len(ks)} experts, it has {len(ws)}")
        for e, (w, k) in enumerate(zip(ws, ks)):
            ok = k.numel() > 0 and int(k.min()) >= 0 and int(k.max()) < w
            if not ok or (k.numel() > 1 and not bool((k[1:] > k[:-1]).all())):
                raise ValueError(
                    f"layer {i} expert {e}: keep indices must be ascending, distinct and in "
                    f"[0, {w}), at least one"
                )


def slice_expert_rows(
    weight: torch.Tensor, widths: Sequence[int], keep: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Rows of the kept neurons of every expert of a ``(sum widths, d_model)`` expert weight."""
    if weight.shape[0] != sum(widths):
        raise ValueError(
            f"expert weight has {weight.shape[0]} rows, widths {list(widths)} need {sum(widths)}"
        )
    offset, rows = 0, []
    for width, k in zip(widths, keep):
        rows.append(k.to(torch.long) + offset)
        offset += width
    return weight.index_select(0, torch.cat(rows).to(weight.device))


def prune_state_dict(
    state: Mapping[str, torch.Tensor], widths: Sequence[Sequence[int]], keep: Keep
) -> Dict[str, torch.Tensor]:
    """A pruned copy of a model state dict (non-expert tensors are the same objects)."""
    check_keep(widths, keep)
    out = {}
    for name, tensor in state.items():
        layer = expert_weight_layer(name)
        out[name] = (
            tensor if layer is None else slice_expert_rows(tensor, widths[layer], keep[layer])
        )
    return out


def prune_model(
    config: TransformerConfig, model: Transformer, keep: Keep
) -> Tuple[TransformerConfig, Transformer]:
    """The config and a new (CPU, eval) model holding ``model``'s weights pruned to ``keep``."""
    widths = expert_widths_per_layer(config)
    new_config = with_expert_widths(config, pruned_widths(keep))
    state = {
        k: v.detach().clone() for k, v in prune_state_dict(model.state_dict(), widths, keep).items()
    }
    new_model = new_config.build(init_device="meta")
    new_model.load_state_dict(state, assign=True)
    return new_config, new_model.eval()


def prune_checkpoint(
    src: Union[str, Path],
    out: Union[str, Path],
    keep: Keep,
    *,
    overwrite: bool = False,
    info: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a model-only checkpoint of ``src`` pruned to ``keep``, streaming tensor by tensor.

    The new config is ``src``'s with the pruned widths; ``info`` (provenance) is stored in its
    ``config.json``. Nothing is written if anything fails.
    """
    config = read_model_config(src)
    widths = expert_widths_per_layer(config)
    check_keep(widths, keep)
    new_widths = pruned_widths(keep)
    state: Dict[str, LazyTensor] = {}
    for name, lazy in lazy_state(src).items():
        layer = expert_weight_layer(name)
        if layer is not None:
            shape = (sum(new_widths[layer]),) + tuple(lazy.shape[1:])
            lazy = LazyTensor(shape, lazy.dtype, _sliced(lazy, widths[layer], keep[layer]))
        state[name] = lazy
    new_config = with_expert_widths(config, new_widths)
    return save_model(out, new_config, state, overwrite=overwrite, info=info)


def _sliced(lazy: LazyTensor, widths: Sequence[int], keep: Sequence[torch.Tensor]):
    return lambda: slice_expert_rows(lazy.load(), widths, keep)
