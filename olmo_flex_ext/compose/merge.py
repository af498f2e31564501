"""Merging FlexOlmo experts trained apart into one mixture of experts of different widths.

Each input is a 2-expert checkpoint (public expert 0, one domain expert 1) grown from the same
public model; its domain expert may have any width, per layer too. The merged model has the public
expert first, then each input's domain expert in the order given, and ``top_k`` as asked. Router
rows come from the inputs (the public row from the first) or from domain embeddings. Every weight
outside the domain experts (attention, norms, embeddings, the public expert's rows, the public
router row) must be identical in all inputs; otherwise the merge refuses, naming the first tensor
that differs, before anything is written.

It streams: tensors are compared one at a time, and the output is written through
:func:`~olmo_flex_ext.checkpoint.save_model` with :class:`~olmo_flex_ext.checkpoint.LazyTensor` s,
so merging 7B experts needs memory for about one layer's expert weights, not the models.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from olmo_core.nn.transformer import TransformerConfig

from ..checkpoint import (
    LazyTensor,
    check_output,
    checkpoint_inputs,
    iter_tensors,
    read_model_config,
    resolve_checkpoint,
    save_model,
    tensor_meta,
)
from ..errors import UserError
from ..models import expert_widths_per_layer, with_expert_widths, with_opt_out, with_top_k
from ..outputs import check_not_input
from ..progress import progress_bar
from .embeddings import DomainEmbeddings, load_domain_embeddings

__all__ = ["merge_experts", "MergeError", "param_names", "expert_rows", "load_tensor"]

PathLike = Union[str, os.PathLike]

_MOE = re.compile(
    r"^blocks\.(\d+)\.feed_forward_moe\.(experts\.mlp\.w[123]|router\.weight|router\.expert_bias)$"
)


class MergeError(UserError):
    """Inputs that cannot be merged (the message names the input and tensor or setting)."""


def load_tensor(path: PathLike, name: str) -> torch.Tensor:
    """One model tensor of a checkpoint."""
    return next(iter_tensors(path, [name]))[1]


def param_names(config: TransformerConfig) -> List[str]:
    """The model's state-dict names in model order (built on the meta device, no memory)."""
    return list(config.build(init_device="meta").state_dict().keys())


def expert_rows(widths: Sequence[int], experts: Sequence[int]) -> torch.Tensor:
    """Indices of the rows of a ``(sum of widths, d_model)`` expert tensor that hold ``experts``."""
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    return torch.cat([torch.arange(offsets[e], offsets[e + 1]) for e in experts])


def moe_param(name: str) -> Optional[Tuple[int, str]]:
    """``(layer, kind)`` for expert/router tensors (kind ``w1``, ``w2``, ``w3``, ``router``,
    ``bias``), ``None`` for everything else (shared weights)."""
    m = _MOE.match(name)
    if m is None:
        return None
    kind = m.group(2)
    kind = {"router.weight": "router", "router.expert_bias": "bias"}.get(kind, kind[-2:])
    return int(m.group(1)), kind


@dataclass
class _Input:
    path: Path
    config: TransformerConfig
    widths: List[List[int]]  # per layer: [public, domain]

    @property
    def public(self) -> List[int]:
        return [w[0] for w in self.widths]


def _read_input(path: PathLike) -> _Input:
    p = resolve_checkpoint(path)
    config = read_model_config(p)
    widths = expert_widths_per_layer(config)
    if any(len(w) != 2 for w in widths):
        raise MergeError(
            f"{p} has {len(widths[0])} experts per layer; merge takes 2-expert checkpoints "
            "(public expert 0 and one domain expert)"
        )
    return _Input(p, config, widths)


def _settings(config: TransformerConfig) -> Dict[str, Any]:
    """The config as a dict with what merging may change (domain widths, top_k, opt-out) and what
    only concerns training (``freeze_params``: each expert's run froze what it did not train)
    blanked, layer by layer, so any other difference between inputs shows."""
    model = config.as_config_dict()
    model.pop("freeze_params", None)
    model.pop("block_overrides", None)
    model.pop("block", None)
    layers = {}
    for i, block in enumerate(config.resolved_block_configs):
        b = block.as_config_dict()
        moe = b.get("feed_forward_moe") or {}
        for key in ("expert_widths", "hidden_size", "opt_out"):
            moe.pop(key, None)
        (moe.get("router") or {}).pop("top_k", None)
        layers[f"layer {i}"] = b
    return {"model": model, **layers}


def _first_difference(a: Any, b: Any, prefix: str = "") -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
            if d is not None:
                return d
        return None
    return None if a == b else f"{prefix} ({a!r} vs {b!r})"


def _check_configs(inputs: List[_Input]) -> None:
    first = inputs[0]
    ref = _settings(first.config)
    for inp in inputs[1:]:
        if inp.config.n_layers != first.config.n_layers:
            raise MergeError(
                f"{inp.path} has {inp.config.n_layers} layers but {first.path} has "
                f"{first.config.n_layers}; experts must be grown from the same public model"
            )
        if inp.public != first.public:
            raise MergeError(
                f"{inp.path} has public expert widths {inp.public} but {first.path} has "
                f"{first.public}; experts must share the same public expert"
            )
        diff = _first_difference(ref, _settings(inp.config))
        if diff is not None:
            raise MergeError(
                f"{inp.path} and {first.path} have different model settings: {diff}; experts "
                "must be grown from the same public model"
            )


def merged_config(inputs: Sequence[_Input], top_k: int) -> TransformerConfig:
    """The merged model's config: public expert, then each input's domain expert, ``top_k``."""
    n_layers = inputs[0].config.n_layers
    widths = [
        [inputs[0].widths[i][0]] + [inp.widths[i][1] for inp in inputs] for i in range(n_layers)
    ]
    num = len(widths[0])
    if not 1 <= top_k <= num:
        raise MergeError(f"--top-k {top_k} must be between 1 and the number of experts ({num})")
    config = with_expert_widths(inputs[0].config, widths)
    config.freeze_params = None  # how the first input was trained is not the merged model's
    return with_opt_out(with_top_k(config, top_k), None)


def _verify_shared(
    inputs: List[_Input], names: List[str], router_public: bool, tick: Callable[[], None]
) -> None:
    """Compare every shared tensor (and shared part) of the inputs, one tensor at a time."""
    d_model = inputs[0].config.d_model
    for name in names:
        kind = moe_param(name)
        if kind is not None and kind[1] == "bias":
            tick()
            continue
        if kind is None:
            part, what = (lambda t: t), ""
        elif kind[1] == "router":
            if not router_public:
                tick()
                continue
            part, what = (lambda t: t[:d_model]), " (the public expert's router row)"
        else:
            pub = inputs[0].widths[kind[0]][0]
            part, what = (lambda t, pub=pub: t[:pub]), " (the public expert's rows)"
        ref = part(load_tensor(inputs[0].path, name))
        for inp in inputs[1:]:
            other = part(load_tensor(inp.path, name))
            if other.dtype != ref.dtype or other.shape != ref.shape or not torch.equal(other, ref):
                raise MergeError(
                    f"shared tensor {name}{what} differs between {inputs[0].path} and {inp.path}; "
                    "experts can only be merged when everything outside their domain expert is "
                    "identical (grown from the same public model, public weights frozen)"
                )
        tick()


def _router_rows(
    inputs: List[_Input], layer: int, emb: Optional[DomainEmbeddings], d_model: int, dtype
) -> torch.Tensor:
    """Layer ``layer``'s merged router weight: embeddings for the last ``len(emb)`` experts, the
    inputs' rows for the others (public row from the first input, domain row from its input)."""
    name = f"blocks.{layer}.feed_forward_moe.router.weight"
    n = len(inputs) + 1
    first_emb = n - (0 if emb is None else len(emb))
    rows = []
    for e in range(n):
        if emb is not None and e >= first_emb:
            rows.append(emb.row(e - first_emb, layer))
        else:
            rows.append(load_tensor(inputs[max(e - 1, 0)].path, name).view(2, d_model)[min(e, 1)])
    return torch.stack([r.to(dtype) for r in rows]).reshape(-1)


def merge_experts(
    inputs: Sequence[PathLike],
    out: PathLike,
    *,
    top_k: int,
    router_from: Optional[Union[PathLike, Sequence[PathLike], DomainEmbeddings]] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Merge 2-expert checkpoints into one model-only checkpoint at ``out`` (see module doc).

    :param router_from: domain embeddings (files or loaded) giving the router rows: one vector per
        expert (public first, then the inputs in order) or one per input (the public row then
        comes from the first input).
    :returns: ``out``.
    """
    if len(inputs) < 1:
        raise MergeError("give at least one checkpoint to merge")
    check_output(out, overwrite)
    parsed = [_read_input(p) for p in inputs]
    if len({inp.path.resolve() for inp in parsed}) != len(parsed):
        raise MergeError("the same checkpoint is given twice; each domain expert can appear once")
    check_not_input(out, [q for p in inputs for q in checkpoint_inputs(p)])
    _check_configs(parsed)
    config = merged_config(parsed, top_k)
    d_model, n_layers = config.d_model, config.n_layers
    emb: Optional[DomainEmbeddings] = None
    if router_from is not None:
        emb = (
            router_from
            if isinstance(router_from, DomainEmbeddings)
            else load_domain_embeddings(
                [router_from] if isinstance(router_from, (str, os.PathLike)) else list(router_from)
            )
        )
        if len(emb) not in (len(parsed), len(parsed) + 1):
            raise MergeError(
                f"--router-from has {len(emb)} embeddings ({', '.join(emb.names)}) for "
                f"{len(parsed) + 1} experts; give one per expert (public first) or one per input"
            )
        emb.check(n_layers, d_model, "--router-from")
    names = param_names(parsed[0].config)
    specs = tensor_meta(parsed[0].path)
    missing = [n for n in names if n not in specs]
    if missing:
        raise MergeError(
            f"{parsed[0].path} has no tensor {missing[0]}: it is not the model its config.json describes"
        )
    out_specs = tensor_specs_of(config, specs)
    router_public = emb is None or len(emb) == len(parsed)

    with progress_bar(
        "checking shared weights", len(names), unit="tensors", enabled=progress
    ) as tick:
        _verify_shared(parsed, names, router_public, tick)
    with progress_bar("writing merged model", len(names), unit="tensors", enabled=progress) as tick:

        def lazy(name: str) -> LazyTensor:
            shape, dtype = out_specs[name]

            def load() -> torch.Tensor:
                t = _merged_tensor(parsed, name, emb, d_model, dtype)
                tick()
                return t

            return LazyTensor(shape, dtype, load)

        state = {name: lazy(name) for name in names}
        info = {
            "merge": {
                "inputs": [str(inp.path) for inp in parsed],
                "top_k": top_k,
                "router_from": None if emb is None else emb.info,
                "router_rows": None if emb is None else emb.names,
                "expert_widths": expert_widths_per_layer(config),
            }
        }
        return save_model(out, config, state, overwrite=overwrite, info=info)


def tensor_specs_of(
    config: TransformerConfig, like: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]
) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """Shapes of ``config``'s model with the dtypes of the checkpoint ``like`` describes."""
    model = config.build(init_device="meta")
    return {
        n: (tuple(t.shape), like[n][1] if n in like else t.dtype)
        for n, t in model.state_dict().items()
    }


def _merged_tensor(
    inputs: List[_Input], name: str, emb: Optional[DomainEmbeddings], d_model: int, dtype
) -> torch.Tensor:
    kind = moe_param(name)
    if kind is None:
        return load_tensor(inputs[0].path, name)
    layer, what = kind
    if what == "router":
        return _router_rows(inputs, layer, emb, d_model, dtype)
    if what == "bias":
        return torch.cat([load_tensor(inp.path, name) for inp in inputs])
    pub = inputs[0].widths[layer][0]
    out, start = None, 0
    for k, inp in enumerate(inputs):  # one input tensor in memory at a time, copied into place
        t = load_tensor(inp.path, name)
        if out is None:
            rows = pub + sum(i.widths[layer][1] for i in inputs)
            out = t.new_empty((rows, *t.shape[1:]), dtype=dtype)
        part = t if k == 0 else t[pub:]
        out[start : start + part.shape[0]].copy_(part)
        start += part.shape[0]
        del t, part
    assert out is not None and start == out.shape[0]
    return out
