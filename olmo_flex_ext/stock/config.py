"""Model configs of stock OLMo-core MoE checkpoints and the variable-width configs they become.

OLMo-core's :class:`~olmo_core.nn.moe.MoEConfig` stores a layer's experts in one of two layouts,
chosen by ``name`` (:class:`~olmo_core.nn.moe.MoEType`; the same weight names, one ``hidden_size``):

- ``default`` (``MoEMLP``): ``w1``, ``w3`` are ``(experts * d_model, hidden)``, viewed
  ``(experts, d_model, hidden)`` and applied as ``x @ w1[e]``; ``w2`` is ``(experts * hidden,
  d_model)``. OLMo-core's FlexOlmo and OLMoE-NxE configs use this type.
- ``dropless`` (``DroplessMoEMLP``): ``w1``, ``w2``, ``w3`` are all ``(experts * hidden,
  d_model)``, viewed ``(experts, hidden, d_model)``: exactly the variable-width layout with equal
  widths.

Which layout a checkpoint has is read from its config, never guessed from shapes (with
``d_model == hidden`` both layouts have the same shapes). A stock MoE config becomes a
:class:`~olmo_flex_ext.nn.moe.VariableMoEConfig` with every other field kept (router, losses,
dtype; ``capacity_factor`` is carried along for the way back and ignored by the variable MoE,
which drops no tokens; ``name`` becomes the default one). Features the variable MoE does
not have are refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Optional, Tuple

from olmo_core.nn.moe import MoEConfig, MoERouterConfig, MoEType
from olmo_core.nn.transformer import TransformerBlockConfig, TransformerBlockType, TransformerConfig

from ..errors import UserError
from ..models import with_expert_widths
from ..nn.moe import VariableMoEConfig
from ..nn.router import FlexRouterConfig

__all__ = [
    "LAYOUTS",
    "WIDTHS_KEY",
    "StockError",
    "ExpertLayout",
    "is_stock_moe",
    "stock_layouts",
    "variable_from_stock",
    "stock_from_variable",
    "check_recorded_widths",
    "recorded_widths",
]

LAYOUTS = (MoEType.default.value, MoEType.dropless.value)
"""The stock expert layouts, by ``MoEConfig.name``."""

WIDTHS_KEY = "stock_expert_widths"
"""Key under ``"olmo_flex"`` in ``config.json`` of a zero-padded stock export: the true expert
widths per layer (``null`` for a layer without experts), restored when it is read back."""


class StockError(UserError):
    """A stock OLMo-core checkpoint or config that cannot be converted (the message says why)."""


@dataclass(frozen=True)
class ExpertLayout:
    """How one layer's experts are stored in a stock checkpoint and which widths they hold."""

    layout: str
    """``default`` or ``dropless``."""
    num_experts: int
    d_model: int
    hidden_size: int
    """The stock width (every expert stored at this width)."""
    widths: Tuple[int, ...]
    """True width of each expert (narrower ones are zero-padded to ``hidden_size``)."""

    @property
    def padded(self) -> bool:
        return any(w != self.hidden_size for w in self.widths)

    @property
    def identity(self) -> bool:
        """Whether the stored tensors already are the variable-width tensors."""
        return self.layout == MoEType.dropless and not self.padded

    def describe(self) -> str:
        """The stored layout and how it is read, for ``olmo-flex info``."""
        E, d, h = self.num_experts, self.d_model, self.hidden_size
        padding = "zero padding dropped" if self.padded else ""
        if self.layout == MoEType.default:
            return (
                f"default layout (w1/w3 stored experts x d_model by width, ({E} x {d}, {h})); "
                "converted while reading (w1/w3 transposed per expert, w2 as stored"
                + (f"; {padding})" if padding else ")")
            )
        how = f"{padding} while reading" if padding else "read as stored"
        return (
            f"dropless layout (w1/w2/w3 stored experts x width by d_model, ({E} x {h}, {d})); {how}"
        )


def is_stock_moe(moe: object) -> bool:
    """Whether ``moe`` is OLMo-core's own ``MoEConfig`` (not ours or another subclass)."""
    return type(moe) is MoEConfig


def _block_configs(config: TransformerConfig) -> List[Tuple[str, TransformerBlockConfig]]:
    """(where, block config) for the base block(s) and every block override."""
    out: List[Tuple[str, TransformerBlockConfig]] = []
    if isinstance(config.block, dict):
        out += [(f"block {name!r}", b) for name, b in config.block.items()]
    else:
        out.append(("block", config.block))
    out += [(f"block_overrides[{i}]", b) for i, b in (config.block_overrides or {}).items()]
    return out


def _with_block_moes(
    config: TransformerConfig, fn: Callable[[str, TransformerBlockConfig], Optional[object]]
) -> TransformerConfig:
    """A copy of ``config`` whose blocks' ``feed_forward_moe`` are ``fn(where, block)`` (the
    block is a copy; ``None`` from ``fn`` keeps it)."""
    config = config.copy()

    def mapped(where: str, block: TransformerBlockConfig) -> TransformerBlockConfig:
        block = block.copy()
        moe = fn(where, block)
        if moe is not None:
            block.feed_forward_moe = moe  # type: ignore[assignment]
        return block

    if isinstance(config.block, dict):
        config.block = {name: mapped(f"block {name!r}", b) for name, b in config.block.items()}
    else:
        config.block = mapped("block", config.block)
    if config.block_overrides:
        config.block_overrides = {
            i: mapped(f"block_overrides[{i}]", b) for i, b in config.block_overrides.items()
        }
    return config


def _refuse_unsupported(config: TransformerConfig, where: str) -> None:
    """Raise :class:`StockError` naming the first feature of a stock MoE model that the
    variable-width MoE does not have."""
    if str(config.name) == "moe_fused_v2":
        raise StockError(
            f"{where}: the model type moe_fused_v2 (OLMo-core's fused MoE v2) cannot be read as a "
            "variable-width MoE; only MoEConfig models (default and dropless types) can"
        )
    for place, block in _block_configs(config):
        moe = block.feed_forward_moe
        if moe is None:
            continue
        if block.name == TransformerBlockType.moe_fused_v2:
            raise StockError(
                f"{where}: {place} is of type moe_fused_v2 (OLMo-core's fused MoE v2), which cannot "
                "be read as a variable-width MoE; only MoEConfig blocks can"
            )
        if not isinstance(moe, MoEConfig) or (
            not is_stock_moe(moe) and not isinstance(moe, VariableMoEConfig)
        ):
            raise StockError(
                f"{where}: {place} has a feed_forward_moe of type {type(moe).__name__}, which "
                "cannot be read as a variable-width MoE; only OLMo-core's MoEConfig can"
            )
        if not is_stock_moe(moe):
            continue
        if moe.shared_mlp is not None:
            raise StockError(
                f"{where}: {place} has a shared MLP (feed_forward_moe.shared_mlp, hidden size "
                f"{moe.shared_mlp.hidden_size}), which the variable-width MoE does not have; this "
                "model cannot be converted"
            )
        if moe.latent_moe is not None:
            raise StockError(
                f"{where}: {place} is a latent MoE (feed_forward_moe.latent_moe, latent_dim "
                f"{moe.latent_moe.latent_dim}), which the variable-width MoE does not have; this "
                "model cannot be converted"
            )


def check_recorded_widths(
    recorded: object, layers: Dict[int, ExpertLayout], n_layers: int, where: str
) -> List[Optional[List[int]]]:
    """Validate widths recorded by a padded export (see :data:`WIDTHS_KEY`) against the layers."""
    bad = f"{where}: olmo_flex.{WIDTHS_KEY} is not one list of expert widths per layer"
    if not isinstance(recorded, list) or len(recorded) != n_layers:
        raise StockError(f"{bad} ({n_layers} layers); remove it to read the experts unpadded")
    for i, entry in enumerate(recorded):
        layer = layers.get(i)
        if layer is None:
            if entry is not None:
                raise StockError(f"{bad}: layer {i} has no stock experts but widths {entry!r}")
            continue
        ok = (
            isinstance(entry, list)
            and len(entry) == layer.num_experts
            and all(
                isinstance(w, int) and not isinstance(w, bool) and 0 < w <= layer.hidden_size
                for w in entry
            )
        )
        if not ok:
            raise StockError(
                f"{bad}: layer {i} has {entry!r}, expected {layer.num_experts} widths in "
                f"1..{layer.hidden_size}; remove it to read the experts unpadded"
            )
    return recorded  # type: ignore[return-value]


def stock_layouts(
    config: TransformerConfig, where: str, recorded: object = None
) -> Dict[int, ExpertLayout]:
    """Layer -> :class:`ExpertLayout` for every layer of ``config`` with a stock MoE (empty for
    our variable-width models and dense ones). ``recorded``: the widths a padded export recorded.
    Raises :class:`StockError` for features the variable-width MoE does not have."""
    _refuse_unsupported(config, where)
    layers: Dict[int, ExpertLayout] = {}
    for i, block in enumerate(config.resolved_block_configs):
        moe = block.feed_forward_moe
        if is_stock_moe(moe):
            assert isinstance(moe, MoEConfig)
            layers[i] = ExpertLayout(
                layout=MoEType(moe.name).value,
                num_experts=moe.num_experts,
                d_model=config.d_model,
                hidden_size=moe.hidden_size,
                widths=(moe.hidden_size,) * moe.num_experts,
            )
    if recorded is not None and layers:
        per_layer = check_recorded_widths(recorded, layers, config.n_layers, where)
        layers = {
            i: dataclasses.replace(layer, widths=tuple(per_layer[i] or layer.widths))
            for i, layer in layers.items()
        }
    return layers


def _variable_moe(moe: MoEConfig) -> VariableMoEConfig:
    kept = {f.name: getattr(moe, f.name) for f in fields(MoEConfig)}
    # The variable MoE has one implementation: its name stays MoEConfig's default, as in our own
    # configs, so that models read from either stock layout have equal configs.
    kept["name"] = MoEType.default
    return VariableMoEConfig(**kept, expert_widths=[moe.hidden_size] * moe.num_experts)


def variable_from_stock(
    config: TransformerConfig, layers: Dict[int, ExpertLayout]
) -> TransformerConfig:
    """The variable-width model config of a stock MoE model config (equal widths, or the widths
    ``layers`` restore from a padded export)."""

    def convert(where: str, block: TransformerBlockConfig) -> Optional[object]:
        moe = block.feed_forward_moe
        return _variable_moe(moe) if is_stock_moe(moe) else None  # type: ignore[arg-type]

    out = _with_block_moes(config, convert)
    if any(layer.padded for layer in layers.values()):
        if len(layers) != config.n_layers:
            raise StockError(
                "recorded expert widths need experts in every layer; this model has layers without"
            )
        out = with_expert_widths(out, [list(layers[i].widths) for i in range(config.n_layers)])
    return out


def _stock_router(router: MoERouterConfig, where: str) -> MoERouterConfig:
    if isinstance(router, FlexRouterConfig) and router.expert_bias:
        raise StockError(
            f"{where}: the router has FlexOlmo's expert bias (router.expert_bias), which stock "
            "OLMo-core's router does not have; it cannot be exported"
        )
    return MoERouterConfig(**{f.name: getattr(router, f.name) for f in fields(MoERouterConfig)})


def stock_from_variable(
    config: TransformerConfig, layout: str, *, pad: bool = False
) -> Tuple[TransformerConfig, Dict[int, ExpertLayout]]:
    """The stock OLMo-core config (MoE type ``layout``) of a variable-width model config, and the
    layout of each MoE layer. Experts narrower than the widest of their layer are zero-padded to
    it with ``pad``; without it they are refused."""
    if layout not in LAYOUTS:
        raise StockError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")

    def convert(where: str, block: TransformerBlockConfig) -> Optional[object]:
        moe = block.feed_forward_moe
        if moe is None:
            return None
        if not isinstance(moe, VariableMoEConfig):
            raise StockError(
                f"{where} has a feed_forward_moe of type {type(moe).__name__}, not a "
                "variable-width MoE"
            )
        if moe.opt_out:
            raise StockError(
                f"the model switches off experts {moe.opt_out} (opt_out), which stock OLMo-core "
                "cannot do; export the model with all experts on (or merge without them)"
            )
        widths = list(moe.expert_widths)
        if len(set(widths)) > 1 and not pad:
            raise StockError(
                f"{where} has experts of widths {widths}, but a stock OLMo-core MoE layer has one "
                f"width; pass --pad to zero-pad the narrower experts to {max(widths)} (the same "
                "function; the widths are recorded so that reading it back restores them)"
            )
        kept = {f.name: getattr(moe, f.name) for f in fields(MoEConfig)}
        kept.update(
            name=MoEType(layout),
            hidden_size=max(widths),
            router=_stock_router(moe.router, where),
            # the dropless type takes no capacity factor (its build() refuses one)
            capacity_factor=moe.capacity_factor if layout == MoEType.default else None,
        )
        return MoEConfig(**kept)

    stock = _with_block_moes(config, convert)
    layers = {
        i: ExpertLayout(
            layout=layout,
            num_experts=moe.num_experts,
            d_model=config.d_model,
            hidden_size=max(moe.expert_widths),
            widths=tuple(moe.expert_widths),
        )
        for i, block in enumerate(config.resolved_block_configs)
        if isinstance(moe := block.feed_forward_moe, VariableMoEConfig)
    }
    return stock, layers


def recorded_widths(
    layers: Dict[int, ExpertLayout], n_layers: int
) -> Optional[List[Optional[List[int]]]]:
    """What a padded export records under :data:`WIDTHS_KEY` (``None`` if nothing is padded)."""
    if not any(layer.padded for layer in layers.values()):
        return None
    return [list(layers[i].widths) if i in layers else None for i in range(n_layers)]
