"""Expert tensors between stock OLMo-core's MoE layouts and the variable-width layout.

Both directions are permutations of the stored elements (plus dropping or adding zero padding), so
a tensor read and written back is bitwise the original. The same functions convert weights and
every optimizer statistic of the same shape (AdamW's ``exp_avg``/``exp_avg_sq``), which is what
lets a stock run continue as a variable-width run with its optimizer state.

Per layer (see :class:`~olmo_flex_ext.stock.config.ExpertLayout`), with ``E`` experts, width ``h``:

====================  =============================  ================================
tensor                stock ``default``              stock ``dropless`` = variable
====================  =============================  ================================
``w1``, ``w3``        ``(E * d_model, h)``           ``(E * h, d_model)``
``w2``                ``(E * h, d_model)``           ``(E * h, d_model)``
====================  =============================  ================================

Expert ``e``'s variable-width rows are ``w1.view(E, d_model, h)[e].T`` (default) or
``w1.view(E, h, d_model)[e]`` (dropless), trimmed to its width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from olmo_core.nn.moe import MoEType
from olmo_core.nn.transformer import TransformerConfig

from ..nn.moe import expert_weight
from .config import (
    WIDTHS_KEY,
    ExpertLayout,
    StockError,
    stock_from_variable,
    stock_layouts,
    variable_from_stock,
)

__all__ = [
    "StockConversion",
    "expert_from_stock",
    "expert_to_stock",
    "stored_shape",
    "reading_conversion",
    "writing_conversion",
]


def _transposed(w: str, layer: ExpertLayout) -> bool:
    return layer.layout == MoEType.default and w != "w2"


def stored_shape(w: str, layer: ExpertLayout) -> Tuple[int, int]:
    """Shape of ``w1``/``w2``/``w3`` as a stock checkpoint stores it."""
    E, d, h = layer.num_experts, layer.d_model, layer.hidden_size
    return (E * d, h) if _transposed(w, layer) else (E * h, d)


def expert_from_stock(
    w: str, stored: torch.Tensor, layer: ExpertLayout, name: str = ""
) -> torch.Tensor:
    """The variable-width ``(sum of widths, d_model)`` tensor of a stock-stored ``w1/w2/w3`` (or
    of an optimizer statistic of the same shape). Padding beyond an expert's width must be zero."""
    if tuple(stored.shape) != stored_shape(w, layer):
        raise StockError(
            f"{name or w} has shape {tuple(stored.shape)}, but the {layer.layout} layout of "
            f"config.json stores it as {stored_shape(w, layer)}"
        )
    E, d, h = layer.num_experts, layer.d_model, layer.hidden_size
    if _transposed(w, layer):
        per_expert = stored.view(E, d, h).transpose(1, 2)
    else:
        per_expert = stored.view(E, h, d)
    if not layer.padded:
        return per_expert.reshape(E * h, d)
    for e, width in enumerate(layer.widths):
        if per_expert[e, width:].count_nonzero() > 0:
            raise StockError(
                f"{name or w}: expert {e} has non-zero values beyond its recorded width {width}: "
                "the checkpoint was changed after it was exported zero-padded; remove "
                f"olmo_flex.{WIDTHS_KEY} from its config.json to read the experts at full width"
            )
    return torch.cat([per_expert[e, :width] for e, width in enumerate(layer.widths)])


def expert_to_stock(
    w: str, ragged: torch.Tensor, layer: ExpertLayout, name: str = ""
) -> torch.Tensor:
    """The stock-stored ``w1/w2/w3`` (or optimizer statistic) of a variable-width tensor;
    narrower experts are zero-padded to the layer's ``hidden_size``."""
    E, d, h = layer.num_experts, layer.d_model, layer.hidden_size
    if tuple(ragged.shape) != (sum(layer.widths), d):
        raise StockError(
            f"{name or w} has shape {tuple(ragged.shape)}, expected {(sum(layer.widths), d)}"
        )
    if layer.padded:
        per_expert = ragged.new_zeros(E, h, d)
        for e, part in enumerate(ragged.split(list(layer.widths))):
            per_expert[e, : part.shape[0]] = part
    else:
        per_expert = ragged.view(E, h, d)
    if _transposed(w, layer):
        return per_expert.transpose(1, 2).reshape(E * d, h)
    return per_expert.reshape(E * h, d)


@dataclass
class StockConversion:
    """How the expert tensors of a stock OLMo-core MoE model map to the variable-width model.

    ``stock`` is the stock model config, ``config`` the variable-width one; ``layers`` gives the
    stock layout of each MoE layer. :meth:`read` takes a stored tensor to ours, :meth:`write`
    ours to stored; every other tensor is the same in both.
    """

    stock: TransformerConfig
    config: TransformerConfig
    layers: Dict[int, ExpertLayout]

    @property
    def identity(self) -> bool:
        """Whether every tensor is stored exactly as the variable-width model holds it."""
        return all(layer.identity for layer in self.layers.values())

    @property
    def padded(self) -> bool:
        return any(layer.padded for layer in self.layers.values())

    def expert(self, name: str) -> Optional[Tuple[str, ExpertLayout]]:
        """``(w, layout)`` if ``name`` is an expert weight of a stock layer, else ``None``."""
        found = expert_weight(name)
        if found is None or found[0] not in self.layers:
            return None
        return found[1], self.layers[found[0]]

    def read_shape(self, name: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        found = self.expert(name)
        return shape if found is None else (sum(found[1].widths), found[1].d_model)

    def write_shape(self, name: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        found = self.expert(name)
        return shape if found is None else stored_shape(*found)

    def read(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        found = self.expert(name)
        return tensor if found is None else expert_from_stock(found[0], tensor, found[1], name)

    def write(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        found = self.expert(name)
        return tensor if found is None else expert_to_stock(found[0], tensor, found[1], name)

    def describe(self) -> List[str]:
        """Lines for ``olmo-flex info``: the stored layout of each run of layers and what it becomes."""
        lines = []
        for (first, last), layer in _runs(self.layers):
            span = f"layer {first}" if first == last else f"layers {first}-{last}"
            lines.append(
                f"stock OLMo-core MoE, {span}: {layer.describe()}, as the variable-width MoE "
                f"with expert widths {list(layer.widths)}"
            )
            moe = self.stock.resolved_block_configs[first].feed_forward_moe
            if layer.layout == MoEType.default and moe.router.top_k < moe.num_experts:
                factor = moe.capacity_factor
                lines.append(
                    "  note: OLMo-core's default type drops tokens beyond each expert's capacity "
                    f"(capacity_factor {factor if factor is not None else 'unset, i.e. 1.2'}); "
                    "the variable-width MoE drops none, so outputs agree wherever no expert "
                    "overflows"
                )
        return lines


def _runs(layers: Dict[int, ExpertLayout]) -> List[Tuple[Tuple[int, int], ExpertLayout]]:
    out: List[Tuple[Tuple[int, int], ExpertLayout]] = []
    for i in sorted(layers):
        if out and out[-1][0][1] == i - 1 and out[-1][1] == layers[i]:
            out[-1] = ((out[-1][0][0], i), layers[i])
        else:
            out.append(((i, i), layers[i]))
    return out


def reading_conversion(
    stored: TransformerConfig, recorded: object = None, where: str = "checkpoint"
) -> Optional[StockConversion]:
    """The conversion for a checkpoint whose model config is ``stored`` (``recorded``: the
    widths a padded export recorded; ``where`` names the checkpoint in errors), or ``None`` unless
    the model has stock OLMo-core MoE layers."""
    layers = stock_layouts(stored, where, recorded)
    if not layers:
        return None
    return StockConversion(stock=stored, config=variable_from_stock(stored, layers), layers=layers)


def writing_conversion(
    config: TransformerConfig, layout: str, *, pad: bool = False
) -> StockConversion:
    """The conversion that writes the variable-width model ``config`` as a stock OLMo-core model
    with MoE type ``layout`` (``pad``: zero-pad experts narrower than their layer's widest)."""
    stock, layers = stock_from_variable(config, layout, pad=pad)
    if not layers:
        raise StockError("the model has no MoE layers, so it has no stock MoE layout to write")
    return StockConversion(stock=stock, config=config, layers=layers)
