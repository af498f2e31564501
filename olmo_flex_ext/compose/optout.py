"""Opt-out: switch experts off at inference, exactly as if they had never been merged in.

Three ways, all the same function:

- on a built model: :func:`set_opt_out` (``set_opt_out(model, [2])``; ``set_opt_out(model, [])``
  switches all back on), in place, no reload;
- in a config: ``VariableMoEConfig.opt_out`` (:func:`~olmo_flex_ext.models.with_opt_out`
  sets it on every layer; a train/eval config can use ``--model.block.feed_forward_moe.opt_out=[2]``
  when all layers share one block config);
- as a checkpoint: :func:`write_opt_out` (``olmo-flex opt-out CKPT --experts 2 --out DST``) copies
  the weights and sets the config; with ``drop=True`` (``--drop``) it removes the experts' weights
  instead, giving a smaller model with ``top_k = min(top_k, remaining)``.

With ``N`` experts and ``top_k = K``, switching off expert ``j`` routes each token over the other
``N - 1`` experts with ``top_k = min(K, N - 1)``: the router's softmax and top-k run over the
remaining experts only. (Masking logits alone is not enough when ``K == N``: the model without
expert ``j`` sends every token to all ``N - 1`` experts.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from olmo_core.nn.transformer import Transformer

from ..checkpoint import (
    LazyTensor,
    check_output,
    checkpoint_inputs,
    lazy_state,
    read_model_config,
    resolve_checkpoint,
    save_model,
    tensor_meta,
)
from ..errors import UserError
from ..models import expert_widths_per_layer, with_opt_out, without_experts
from ..nn.moe import VariableMoE
from ..nn.router import active_experts
from ..outputs import check_not_input
from .merge import expert_rows, load_tensor, moe_param, param_names

__all__ = ["set_opt_out", "write_opt_out"]

PathLike = Union[str, os.PathLike]


def set_opt_out(model: Transformer, experts: Sequence[int]) -> Transformer:
    """Switch off ``experts`` (ids, same in every layer) in a built model, in place; an empty list
    switches every expert back on. Returns ``model``."""
    layers = [m for m in model.modules() if isinstance(m, VariableMoE)]
    if not layers:
        raise UserError("the model has no variable-width MoE layers, so no experts to switch off")
    for layer in layers:
        layer.set_opt_out(list(experts))
    return model


def _dropped_tensor(src: Path, name: str, widths: List[List[int]], keep: List[int], d_model: int):
    t = load_tensor(src, name)
    kind = moe_param(name)
    if kind is None:
        return t
    layer, what = kind
    if what == "router":
        return t.view(-1, d_model).index_select(0, torch.tensor(keep)).reshape(-1)
    if what == "bias":  # entries for domain experts 1..N-1
        return t.index_select(0, torch.tensor([e - 1 for e in keep if e > 0]))
    return t.index_select(0, expert_rows(widths[layer], keep))


def write_opt_out(
    src: PathLike,
    out: PathLike,
    experts: Optional[Sequence[int]],
    *,
    drop: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``src`` with ``experts`` switched off to ``out`` (model-only checkpoint).

    Without ``drop`` the weights are copied bit for bit and the config gets ``opt_out`` (run it
    again with ``experts=[]`` to switch them back on). With ``drop`` the experts' rows are removed.
    """
    src_path = resolve_checkpoint(src)
    check_output(out, overwrite)
    check_not_input(out, checkpoint_inputs(src))
    config = read_model_config(src_path)
    experts = sorted(int(e) for e in experts or [])
    if drop and not experts:
        raise UserError("--drop needs at least one expert to remove (--experts 2)")
    new_config = without_experts(config, experts) if drop else with_opt_out(config, experts)
    if drop:
        specs = tensor_meta(src_path)
        out_model = new_config.build(init_device="meta").state_dict()
        widths = expert_widths_per_layer(config)
        keep = active_experts(len(widths[0]), experts)

        def dropped(name: str) -> LazyTensor:
            def load() -> torch.Tensor:
                return _dropped_tensor(src_path, name, widths, keep, config.d_model)

            return LazyTensor(tuple(out_model[name].shape), specs[name][1], load)

        state = {name: dropped(name) for name in param_names(config)}
    else:
        state = lazy_state(src_path)  # weights copied as they are
    info = {"opt_out": {"source": str(src_path), "experts": experts, "drop": drop}}
    return save_model(out, new_config, state, overwrite=overwrite, info=info)
