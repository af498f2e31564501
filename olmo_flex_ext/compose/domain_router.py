"""Domain routers: router rows that tell a domain's tokens from the public data's.

A FlexOlmo expert is trained against the frozen public model, and at merge time its router row
decides which tokens it gets. Rows taken from mean domain embeddings score every token much alike
(the means share a large common part), so a merged model spreads each domain's tokens over
experts that never saw them. A domain router instead fits, per layer, a logistic regression of
"this domain" against "public data" on the public model's router inputs ``x``:
``P(domain | x) = sigmoid(w . x + b)``. Written as a 2-expert router (public row ``0``, expert row
``w``, FlexOlmo's never-positive expert bias ``b``), the softmax gives the domain expert exactly
that posterior as its weight. It needs only the public model, the owner's own data and public
data, as FlexOlmo's data constraint allows; experts fitted apart merge into one router whose
logits are each expert's log-odds against the public data.

File format (``olmo-flex domain-router``): one safetensors file with ``router`` float32
``(n_layers, 2, d_model)`` (rows: public, domain) and ``expert_bias`` float32 ``(n_layers, 1)``;
metadata: ``method``, ``checkpoint``, ``data``, ``tokens``, ``l2``, ``accuracy`` (per layer, on the
fitted tokens). :func:`olmo_flex_ext.hf.upcycling.upcycle` takes it as ``router_from`` and turns on
the expert bias.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..atomic import atomic_file
from ..errors import UserError
from .embeddings import for_router_inputs, read_domain_windows

__all__ = ["DomainRouter", "fit_log_odds", "fit_domain_router", "save_domain_router"]

PathLike = Union[str, os.PathLike]


@dataclass
class DomainRouter:
    """Per layer the expert's router row ``w`` (``(n_layers, d_model)``) and bias ``b``
    (``(n_layers,)``, never positive), with the fit's accuracy per layer."""

    weight: torch.Tensor
    bias: torch.Tensor
    accuracy: List[float]
    info: Dict[str, Any] = field(default_factory=dict)

    def router(self) -> torch.Tensor:
        """Router rows ``(n_layers, 2, d_model)``: public row zero, expert row ``w``."""
        return torch.stack([torch.zeros_like(self.weight), self.weight], dim=1)


def fit_log_odds(
    own: torch.Tensor, public: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 200
) -> Tuple[torch.Tensor, float, float]:
    """Logistic regression of ``own`` rows (label 1) against ``public`` rows (label 0), each
    class weighted equally, with L2 penalty ``l2`` on the weights; the bias is kept <= 0 (refit
    without it when the free fit wants it positive). Returns ``(w, b, accuracy)``.

    Written with torch's L-BFGS: a few lines, and the project's dependencies hold no classifier."""
    x = torch.cat([own, public]).double()
    y = torch.cat([torch.ones(len(own)), torch.zeros(len(public))]).double()
    weight = torch.cat([torch.full((len(own),), 0.5 / len(own)),
                        torch.full((len(public),), 0.5 / len(public))]).double()  # fmt: skip
    scale = x.std(0).clamp_min(1e-6)  # fit on standardised inputs, for conditioning

    def fit(with_bias: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=with_bias)
        opt = torch.optim.LBFGS([w, b] if with_bias else [w], max_iter=max_iter,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = (x / scale) @ w + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y, weight=weight, reduction="sum"
            )
            loss = loss + 0.5 * l2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach() / scale, b.detach()

    w, b = fit(True)
    if b > 0:
        w, b = fit(False)
    logits = x @ w + b
    accuracy = float((((logits > 0).double() == y).double() * weight).sum())
    return w.float(), float(b), accuracy


def fit_domain_router(
    checkpoint: PathLike,
    own: Union[str, Sequence[str]],
    public: Union[str, Sequence[str]],
    *,
    seq_len: int,
    num_seqs: int,
    tokens_per_seq: Optional[int] = None,
    l2: float = 1e-3,
    batch_size: int = 8,
    dtype: Optional[str] = None,
    progress: bool = True,
) -> DomainRouter:
    """Fit a domain router on ``checkpoint``'s model (the public model, dense or upcycled): per
    layer, the log-odds of the ``own`` token files against the ``public`` ones from the router
    inputs of ``num_seqs`` windows of ``seq_len`` from each (``tokens_per_seq`` evenly spaced
    positions of each window, default all)."""
    from ..checkpoint import load_model, resolve_checkpoint

    data = read_domain_windows(
        checkpoint, {"own": own, "public": public}, seq_len=seq_len, num_seqs=num_seqs, dtype=dtype
    )
    model = load_model(checkpoint)
    step = max(1, seq_len // (tokens_per_seq or seq_len))
    inputs: Dict[str, List[List[torch.Tensor]]] = {}
    for name, (_, ids) in data.items():
        layers: List[List[torch.Tensor]] = [[] for _ in model.blocks]

        def keep(layer: int, x: torch.Tensor, layers=layers) -> None:
            layers[layer].append(
                x.reshape(-1, seq_len, x.shape[-1])[:, ::step].reshape(-1, x.shape[-1])
            )

        for_router_inputs(model, list(ids.split(batch_size)), keep, progress=progress,
                          description=f"router inputs ({name})")  # fmt: skip
        inputs[name] = layers
    fits = [
        fit_log_odds(torch.cat(o), torch.cat(p), l2=l2)
        for o, p in zip(inputs["own"], inputs["public"])
    ]
    info = {
        "method": "per-layer logistic regression of own against public router inputs",
        "checkpoint": str(resolve_checkpoint(checkpoint)),
        "data": {
            n: {"paths": f.paths, "fingerprint": f.fingerprint()} for n, (f, _) in data.items()
        },
        "tokens": {n: sum(len(t) for t in layers[0]) for n, layers in inputs.items()},
        "seq_len": seq_len,
        "l2": l2,
    }
    return DomainRouter(
        torch.stack([w for w, _, _ in fits]),
        torch.tensor([b for _, b, _ in fits]),
        [a for _, _, a in fits],
        info,
    )


def save_domain_router(path: PathLike, router: DomainRouter, *, overwrite: bool = False) -> Path:
    """Write ``router`` atomically in the file format of the module docstring."""
    from safetensors.torch import save_file

    from ..checkpoint import check_output

    out = Path(path)
    check_output(out, overwrite)
    if router.bias.gt(0).any():
        raise UserError("a domain router's expert bias must not be positive")
    tensors = {
        "router": router.router().float().contiguous(),
        "expert_bias": router.bias.float().reshape(-1, 1).contiguous(),
    }
    metadata = {k: json.dumps(v) for k, v in {**router.info, "accuracy": router.accuracy}.items()}
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out
