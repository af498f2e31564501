"""Domain embeddings for a domain-informed router.

FlexOlmo initialises each expert's router row from the mean embedding of that expert's domain
documents. By default the embedding here is the model's own: for every layer, the mean over all
token positions of the MoE layer's input (the hidden state the router reads) on the domain's token
files, so layer ``i``'s router row for a domain is that domain's mean router input at layer ``i``.
Vectors from any external embedder can be stored with :func:`save_domain_embeddings` (one vector
for all layers, of the model's width).

File format: one safetensors file; tensor ``<name>`` is float32 ``(n_layers, d_model)`` or
``(1, d_model)`` (one vector for every layer); metadata ``names`` (JSON list, the order experts
take them in) and provenance (``method``, ``checkpoint``, ``data``, ``tokens``, ``normalize``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from olmo_core.nn.transformer import Transformer
from safetensors.torch import load_file, save_file

from ..atomic import atomic_file
from ..errors import UserError
from ..progress import progress_bar

__all__ = [
    "DomainEmbeddings",
    "mean_router_inputs",
    "for_router_inputs",
    "read_windows",
    "read_domain_windows",
    "run_batches",
    "compute_domain_embeddings",
    "save_domain_embeddings",
    "load_domain_embeddings",
]

PathLike = Union[str, os.PathLike]


@dataclass
class DomainEmbeddings:
    """Named domain vectors, each ``(n_layers, d_model)`` or ``(1, d_model)``, in order."""

    names: List[str]
    vectors: List[torch.Tensor]
    info: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def row(self, k: int, layer: int) -> torch.Tensor:
        """Domain ``k``'s vector for ``layer`` (shared vectors serve every layer)."""
        v = self.vectors[k]
        return v[0] if v.shape[0] == 1 else v[layer]

    def check(self, n_layers: int, d_model: int, source: str = "domain embeddings") -> None:
        for name, v in zip(self.names, self.vectors):
            if v.ndim != 2 or v.shape[1] != d_model or v.shape[0] not in (1, n_layers):
                raise UserError(
                    f"{source}: embedding {name!r} has shape {tuple(v.shape)} but the model needs "
                    f"({n_layers}, {d_model}) or (1, {d_model}) (d_model={d_model}); compute it "
                    "with `olmo-flex domain-embed` on a checkpoint of this model"
                )


def router_input_layers(model: Transformer) -> List[torch.nn.Module]:
    """Per layer, the module whose input the router reads: the MoE layer, or the MLP of a dense
    model (an upcycled model's router reads what the dense model's MLP read)."""
    layers = []
    for i, block in enumerate(model.blocks.values()):
        module = getattr(block, "feed_forward_moe", None) or getattr(block, "feed_forward", None)
        if module is None:
            raise UserError(f"layer {i} of the model has neither a MoE nor an MLP to route for")
        layers.append(module)
    return layers


def for_router_inputs(
    model: Transformer,
    batches: Sequence[torch.Tensor],
    visit: Callable[[int, torch.Tensor], None],
    *,
    progress: bool = True,
    description: str = "router inputs",
) -> int:
    """Run ``model`` (eval mode, no gradients) on ``batches`` of token ids (each ``(batch,
    seq_len)``) and call ``visit(layer, x)`` with every layer's router input ``x`` as
    ``(tokens, d_model)`` float32 on the CPU; returns the number of tokens read."""
    d_model = model.d_model
    handles = [
        module.register_forward_pre_hook(
            lambda _m, args, _i=i: visit(_i, args[0].detach().reshape(-1, d_model).float().cpu())
        )
        for i, module in enumerate(router_input_layers(model))
    ]
    try:
        return run_batches(model, batches, progress=progress, description=description)
    finally:
        for h in handles:
            h.remove()


def run_batches(
    model: Transformer,
    batches: Sequence[torch.Tensor],
    *,
    progress: bool = True,
    description: str = "batches",
) -> int:
    """Run ``model`` in eval mode without gradients on ``batches`` of token ids (for the hooks
    a caller has registered; its training mode is restored); returns the number of tokens."""
    count = 0
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        bar = progress_bar(
            description, len(batches), unit="batches", enabled=progress, transient=True
        )
        with torch.no_grad(), bar as advance:
            for ids in batches:
                model(ids.to(device))
                count += ids.numel()
                advance()
    finally:
        model.train(was_training)
    return count


def mean_router_inputs(
    model: Transformer,
    batches: Sequence[torch.Tensor],
    *,
    progress: bool = True,
    description: str = "domain embedding",
) -> torch.Tensor:
    """Per layer, the mean over all positions of the router's input (``(n_layers, d_model)``,
    float32) while ``model`` reads ``batches`` of token ids (each ``(batch, seq_len)``)."""
    sums = torch.zeros(len(model.blocks), model.d_model, dtype=torch.float64)

    def add(layer: int, x: torch.Tensor) -> None:
        sums[layer] += x.sum(0, dtype=torch.float64)

    count = for_router_inputs(model, batches, add, progress=progress, description=description)
    if count == 0:
        raise UserError("no tokens to embed: give at least one sequence")
    return (sums / count).float()


def read_windows(
    data: Union[str, Sequence[str]],
    vocab_size: int,
    *,
    seq_len: int,
    num_seqs: int,
    dtype: Optional[str] = None,
) -> Tuple[Any, torch.Tensor]:
    """``num_seqs`` windows of ``seq_len`` token ids spread over the token files ``data``
    (checked against ``vocab_size``): the files and a ``(num_seqs, seq_len)`` int64 tensor."""
    import numpy as np

    from ..data.tokens import TokenFiles, token_dtype

    files = TokenFiles(data, token_dtype(vocab_size, dtype), vocab_size=vocab_size)
    rows = np.stack([files.read(w) for w in files.sample_windows(seq_len, num_seqs)])
    return files, torch.from_numpy(rows.astype(np.int64))


def read_domain_windows(
    checkpoint: PathLike,
    data: Mapping[str, Union[str, Sequence[str]]],
    *,
    seq_len: int,
    num_seqs: int,
    dtype: Optional[str] = None,
) -> Dict[str, Tuple[Any, torch.Tensor]]:
    """:func:`read_windows` of each domain in ``data`` (name -> globs), checked against
    ``checkpoint``'s vocabulary; read before the model loads, so a bad path fails early."""
    from ..checkpoint import read_model_config

    vocab = read_model_config(checkpoint).vocab_size
    return {
        name: read_windows(globs, vocab, seq_len=seq_len, num_seqs=num_seqs, dtype=dtype)
        for name, globs in data.items()
    }


def compute_domain_embeddings(
    checkpoint: PathLike,
    data: Mapping[str, Union[str, Sequence[str]]],
    *,
    seq_len: int,
    num_seqs: int,
    batch_size: int = 8,
    dtype: Optional[str] = None,
    normalize: bool = False,
    progress: bool = True,
) -> DomainEmbeddings:
    """Mean router inputs of ``checkpoint``'s model for each domain in ``data`` (name -> globs of
    OLMo-core token files), over ``num_seqs`` windows of ``seq_len`` tokens spread over the data.
    With ``normalize`` each layer's vector is scaled to unit L2 norm."""
    from ..checkpoint import load_model, resolve_checkpoint

    domains = read_domain_windows(checkpoint, data, seq_len=seq_len, num_seqs=num_seqs, dtype=dtype)
    model = load_model(checkpoint)
    names, vectors, data_info, tokens_info = [], [], [], []
    for name, (files, ids) in domains.items():
        batches = list(ids.split(batch_size))
        v = mean_router_inputs(model, batches, progress=progress, description=f"embedding {name}")
        if normalize:
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        names.append(name)
        vectors.append(v)
        data_info.append({"name": name, "paths": files.paths, "fingerprint": files.fingerprint()})
        tokens_info.append(int(ids.numel()))
    info = {
        "method": "mean router input (MoE layer input) per layer",
        "checkpoint": str(resolve_checkpoint(checkpoint)),
        "data": data_info,
        "tokens": tokens_info,
        "seq_len": seq_len,
        "normalize": normalize,
    }
    return DomainEmbeddings(names, vectors, info)


def save_domain_embeddings(
    path: PathLike,
    embeddings: Union[DomainEmbeddings, Mapping[str, torch.Tensor]],
    *,
    info: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write domain embeddings atomically. ``embeddings`` may be a name -> vector mapping from any
    embedder: a vector ``(d_model,)`` or ``(1, d_model)`` serves every layer, ``(n_layers,
    d_model)`` gives one per layer."""
    if not isinstance(embeddings, DomainEmbeddings):
        embeddings = DomainEmbeddings(
            list(embeddings),
            [
                torch.as_tensor(v).float().reshape(-1, torch.as_tensor(v).shape[-1])
                for v in embeddings.values()
            ],
            dict(info or {"method": "external"}),
        )
    elif info:
        embeddings.info.update(info)
    if not embeddings.names:
        raise UserError("no domain embeddings to save")
    if len(set(embeddings.names)) != len(embeddings.names):
        raise UserError(f"domain names must be distinct, got {embeddings.names}")
    from ..checkpoint import check_output

    out = Path(path)
    check_output(out, overwrite)
    tensors = {n: v.float().contiguous() for n, v in zip(embeddings.names, embeddings.vectors)}
    metadata = {"names": json.dumps(embeddings.names)}
    metadata.update({k: json.dumps(v) for k, v in embeddings.info.items()})
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def load_domain_embeddings(paths: Union[PathLike, Sequence[PathLike]]) -> DomainEmbeddings:
    """Domain embeddings from one or more files, concatenated in the order given."""
    from safetensors import safe_open

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    names: List[str] = []
    vectors: List[torch.Tensor] = []
    infos = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"domain embeddings file {p} does not exist")
        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(p))
            order = json.loads(meta["names"])
        except Exception as e:  # not safetensors, or not written by save_domain_embeddings
            raise UserError(
                f"{p} is not a domain embeddings file ({e}); make one with `olmo-flex domain-embed`"
            ) from None
        names += order
        vectors += [tensors[n] for n in order]
        infos.append(
            {"path": str(p), **{k: json.loads(v) for k, v in meta.items() if k != "names"}}
        )
    return DomainEmbeddings(names, vectors, {"sources": infos})
