"""Weights between transformers' on-disk layout and ours, as streams of :class:`LazyTensor` s.

Names and every non-expert tensor go through OLMo-core's own HF conversion
(``olmo_core.nn.hf.convert``). Expert weights do not: OLMo-core's FlexOlmo templates produce its
``MoEMLP`` layout ``(experts * d_model, width)``, while ours is one ragged ``(sum of widths,
d_model)`` tensor per ``w1/w2/w3`` (expert 0 first), so they are stacked here from the per-expert
HF tensors that OLMo-core's mapping names: ``w1`` rows are ``gate_proj``, ``w3`` rows are
``up_proj``, ``w2`` rows are ``down_proj`` transposed. Experts narrower than the exported width are
zero-padded (zero rows in gate/up, zero columns in down), which adds ``silu(0) * 0 = 0``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from olmo_core.nn.conversion.state_mapping import StateMapping, TemplatePlaceholder
from olmo_core.nn.transformer import TransformerConfig

from ..checkpoint import CheckpointError, LazyTensor
from ..models import expert_widths_per_layer
from ..nn.moe import EXPERT_WEIGHT_RE
from .files import HFDir

__all__ = [
    "experts_from_hf",
    "expert_to_hf",
    "hf_state",
    "to_hf_items",
    "expected_shapes",
    "check_state",
    "cast",
]

EXPERT_RE = EXPERT_WEIGHT_RE
_HF_EXPERT_RE = re.compile(r"\.mlp\.experts\.(\d+)\.")
_LAYER_RE = re.compile(r"(?:blocks|layers)\.(\d+)\.")
_IGNORED_HF = re.compile(r"rotary_emb\.inv_freq$")


def experts_from_hf(
    w: str, per_expert: Sequence[torch.Tensor], widths: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Our ragged ``w1/w2/w3`` from per-expert HF weights (``gate_proj``/``up_proj``
    ``(width, d_model)``, ``down_proj`` ``(d_model, width)``). With ``widths``, each expert keeps
    its first ``widths[e]`` neurons and the rest must be zero padding."""
    rows = [t.t() if w == "w2" else t for t in per_expert]
    if widths is not None:
        for e, (t, width) in enumerate(zip(rows, widths)):
            if t[width:].count_nonzero() > 0:
                raise CheckpointError(
                    f"expert {e} has non-zero weights beyond its recorded width {width}: the model "
                    "was changed after it was exported zero-padded; import it with --keep-padding"
                )
        rows = [t[:width] for t, width in zip(rows, widths)]
    return torch.cat(rows, dim=0)


def expert_to_hf(
    w: str, tensor: torch.Tensor, widths: Sequence[int], pad_to: int, expert: int
) -> torch.Tensor:
    """One expert's HF weight from our ragged ``w1/w2/w3``, zero-padded to ``pad_to`` neurons."""
    start = sum(widths[:expert])
    part = tensor[start : start + widths[expert]]
    if part.shape[0] < pad_to:
        part = torch.cat([part, part.new_zeros(pad_to - part.shape[0], part.shape[1])])
    return (part.t() if w == "w2" else part).contiguous()


def cast(t: LazyTensor, dtype: Optional[torch.dtype]) -> LazyTensor:
    if dtype is None or dtype == t.dtype:
        return t
    return LazyTensor(t.shape, dtype, lambda: t.load().to(dtype))


def _bounds(n_layers: int, n_experts: int) -> Dict[TemplatePlaceholder, int]:
    bounds = {TemplatePlaceholder.LAYER: n_layers}
    if n_experts:
        bounds[TemplatePlaceholder.EXPERT] = n_experts
    return bounds


def _mappings(converter, keys, bounds) -> List[StateMapping]:
    # OLMo-core lists some tensors twice (a plain rename, then a template); like its own
    # convert(), the later mapping wins.
    by_dest: Dict[Tuple[str, ...], StateMapping] = {}
    for m in converter.get_mappings(dict.fromkeys(keys), bounds):
        by_dest[tuple(m.dest_keys)] = m
    return list(by_dest.values())


def _expert_index(key: str) -> int:
    m = _HF_EXPERT_RE.search(key)
    assert m is not None, key
    return int(m.group(1))


def _layer_index(key: str) -> int:
    m = _LAYER_RE.search(key)
    return int(m.group(1)) if m else -1


def _converted(converter, bounds, sources: Dict[str, LazyTensor], dest: str) -> LazyTensor:
    """One tensor converted by OLMo-core from its source tensors (loaded on demand)."""
    meta = {k: t.placeholder() for k, t in sources.items()}
    out = converter.convert(meta, bounds)[dest]

    def load() -> torch.Tensor:
        return converter.convert({k: t.load() for k, t in sources.items()}, bounds)[dest]

    return LazyTensor(tuple(out.shape), out.dtype, load)


def _hf_width(hf: HFDir, sources: Sequence[str], w: str, d_model: int) -> int:
    """The (one) MLP width of the HF experts in ``sources``; their shapes are checked."""
    shapes = {hf.tensors[k][0] for k in sources}
    shape = next(iter(shapes))
    width = (shape[1] if w == "w2" else shape[0]) if len(shape) == 2 else 0
    expected = (d_model, width) if w == "w2" else (width, d_model)
    if len(shapes) != 1 or shape != expected:
        raise CheckpointError(
            f"{hf.path}: expert weights {sources[0]} ... have shapes {sorted(shapes)}, expected "
            f"all {expected} (width, hidden size); the weights do not match config.json"
        )
    return width


def hf_state(hf: HFDir, config: TransformerConfig) -> Dict[str, LazyTensor]:
    """Our state (OLMo-core names) for the weights of a transformers FlexOlmo or Olmo2 directory,
    shaped for ``config`` (expert widths may be narrower than the HF width: padding is dropped)."""
    from olmo_core.nn.hf.convert import get_converter_from_hf

    widths = expert_widths_per_layer(config) if config.block.feed_forward_moe else None
    n_experts = len(widths[0]) if widths else 0
    bounds = _bounds(config.n_layers, n_experts)
    converter = get_converter_from_hf(hf.model_type)
    keys = [k for k in hf.tensors if not _IGNORED_HF.search(k)]
    state: Dict[str, LazyTensor] = {}
    used = set()
    for m in _mappings(converter, keys, bounds):
        (dest,) = m.dest_keys
        used.update(m.source_keys)
        expert = EXPERT_RE.match(dest)
        if expert is None:
            state[dest] = _converted(
                converter, bounds, {k: hf.lazy(k) for k in m.source_keys}, dest
            )
            continue
        assert widths is not None
        layer, w = int(expert.group(1)), expert.group(2)
        sources = sorted(m.source_keys, key=_expert_index)
        layer_widths = widths[layer]
        hf_width = _hf_width(hf, sources, w, config.d_model)
        trim = None if all(x == hf_width for x in layer_widths) else layer_widths

        def load(sources=sources, w=w, trim=trim) -> torch.Tensor:
            return experts_from_hf(w, [hf.load(k) for k in sources], trim)

        state[dest] = LazyTensor(
            (sum(layer_widths), config.d_model), hf.tensors[sources[0]][1], load
        )
    unused = sorted(set(keys) - used)
    if unused:
        raise CheckpointError(
            f"{hf.path} has tensors that a {hf.model_type} model of this config does not use, "
            f"e.g. {unused[0]}; the weights do not match config.json"
        )
    return state


def expected_shapes(config: TransformerConfig) -> Dict[str, Tuple[int, ...]]:
    """Parameter name -> shape of a model built from ``config`` (on the meta device)."""
    model = config.build(init_device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(state: Dict[str, LazyTensor], config: TransformerConfig, where: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the tensors ``config`` needs."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{where} lacks weights the model needs, e.g. {missing[0]}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{where} has weights the model does not use, e.g. {extra[0]}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(state[k].shape)} but config.json implies {shape}"
            )


class _LastLoaded:
    """Loads a lazy tensor once for several consumers in a row (one tensor held at a time)."""

    def __init__(self) -> None:
        self._name: Optional[str] = None
        self._tensor: Optional[torch.Tensor] = None

    def get(self, name: str, t: LazyTensor) -> torch.Tensor:
        if self._name != name:
            self._name, self._tensor = None, None
            self._tensor, self._name = t.load(), name
        assert self._tensor is not None
        return self._tensor


def to_hf_items(
    state: Dict[str, LazyTensor], config: TransformerConfig
) -> List[Tuple[str, LazyTensor]]:
    """HF FlexOlmo tensors (name, lazy tensor), layer by layer, for our ``state``; every expert is
    zero-padded to the widest expert of the model."""
    from olmo_core.nn.hf.convert import get_converter_to_hf

    widths = expert_widths_per_layer(config)
    pad_to = max(max(w) for w in widths)
    bounds = _bounds(config.n_layers, len(widths[0]))
    converter = get_converter_to_hf("flex_olmo")
    cache = _LastLoaded()
    items: List[Tuple[int, str, LazyTensor]] = []
    used = set()
    for m in _mappings(converter, state, bounds):
        used.update(m.source_keys)
        (source,) = m.source_keys
        expert = EXPERT_RE.match(source)
        if expert is None:
            (dest,) = m.dest_keys
            converted = _converted(converter, bounds, {source: state[source]}, dest)
            items.append((_layer_index(dest), dest, converted))
            continue
        layer, w = int(expert.group(1)), expert.group(2)
        d_model = config.d_model
        shape = (d_model, pad_to) if w == "w2" else (pad_to, d_model)
        for dest in sorted(m.dest_keys, key=_expert_index):
            e = _expert_index(dest)

            def load(source=source, w=w, layer=layer, e=e) -> torch.Tensor:
                full = cache.get(source, state[source])
                return expert_to_hf(w, full, widths[layer], pad_to, e)

            items.append((layer, dest, LazyTensor(shape, state[source].dtype, load)))
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(
            f"the checkpoint has weights with no FlexOlmo counterpart, e.g. {unused[0]}"
        )
    # Embeddings first, then layer by layer (experts of one tensor in a row), then the head.
    order = {
        "model.embed_tokens.weight": -2,
        "model.norm.weight": 1 << 30,
        "lm_head.weight": 1 << 30,
    }
    items.sort(key=lambda x: order.get(x[1], x[0]))  # stable: keeps each layer's order
    return [(name, t) for _, name, t in items]
