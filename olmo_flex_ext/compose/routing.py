"""Routing statistics: where a model's routers send each domain's tokens.

Per MoE layer and per domain, two numbers for each expert:

- ``share``: the fraction of the domain's tokens for which the expert is among the router's
  ``top_k`` selections (in [0, 1]; over the experts of a layer the shares sum to ``top_k``);
- ``probability``: the mean router probability of the expert (the softmax over the experts that
  are on, so a switched-off expert has 0 in both).

They are what the model's routers compute: a forward hook on each router reads the experts it
selected from its output and recomputes the probabilities from its input with the router's own
``get_expert_logits``. Sums are float64.

File format (:meth:`RoutingStatistics.to_json`, one JSON object): ``domains``, ``experts``
(names or ``null``), ``num_experts``, ``top_k``, ``opt_out``, ``tokens`` (domain -> token count),
``share`` and ``probability`` (domain -> layer -> expert), ``info`` (provenance).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from olmo_core.nn.transformer import Transformer

from ..atomic import write_atomic
from ..errors import UserError
from .embeddings import read_domain_windows, run_batches

__all__ = ["RoutingStatistics", "routing_statistics", "checkpoint_routing"]

PathLike = Union[str, os.PathLike]
Table = List[List[float]]  # layer -> expert


@dataclass
class RoutingStatistics:
    """Per domain, per MoE layer, per expert: the share of tokens routed there and the mean
    router probability (see the module doc)."""

    domains: List[str]
    num_experts: int
    top_k: int
    """Experts each token is routed to (with opt-out: at most the experts that are on)."""
    tokens: Dict[str, int]
    share: Dict[str, Table]
    probability: Dict[str, Table]
    experts: Optional[List[str]] = None
    """Expert names, public first (optional)."""
    opt_out: List[int] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.share[self.domains[0]])

    def expert_names(self) -> List[str]:
        """The expert names, or ``expert 0``, ``expert 1``, ..."""
        return self.experts or [f"expert {e}" for e in range(self.num_experts)]

    def layer_mean(self, table: Mapping[str, Table], domain: str) -> List[float]:
        """``table[domain]`` (``share`` or ``probability``) averaged over layers, per expert."""
        rows = table[domain]
        return [sum(r[e] for r in rows) / len(rows) for e in range(self.num_experts)]

    def to_json(self) -> Dict[str, Any]:
        """A plain, JSON-safe dict (what :meth:`from_json` reads)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: Any, source: str = "routing statistics") -> "RoutingStatistics":
        """Statistics from a parsed JSON object, checked; one ``UserError`` naming ``source`` and
        the first problem otherwise."""
        problem = _problem(data)
        if problem is not None:
            raise UserError(f"{source} is not valid routing statistics: {problem}")
        return cls(**data)

    def save(self, path: PathLike) -> Path:
        """Write the statistics as JSON, atomically."""
        return write_atomic(Path(path), json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> "RoutingStatistics":
        """Read and check a file written by :meth:`save`."""
        return cls.from_json(read_json(path, "routing statistics"), str(path))


def read_json(path: PathLike, what: str) -> Any:
    """A JSON file's content; a missing or unparsable file is a ``UserError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None


_FIELDS = ("domains", "num_experts", "top_k", "tokens", "share", "probability", "experts",
           "opt_out", "info")  # fmt: skip


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _problem(d: Any) -> Optional[str]:
    """The first thing wrong with a parsed statistics object, or ``None``."""
    if not isinstance(d, dict):
        return f"a {type(d).__name__}, not an object"
    if missing := [k for k in _FIELDS if k not in d]:
        return f"missing {missing[0]!r}"
    if extra := sorted(set(d) - set(_FIELDS)):
        return f"unknown field {extra[0]!r}"
    domains, n = d["domains"], d["num_experts"]
    if not isinstance(domains, list) or not domains or not all(isinstance(x, str) for x in domains):
        return "domains must be a non-empty list of names"
    if len(set(domains)) != len(domains):
        return "domains must be distinct"
    if not _is_int(n) or n < 1:
        return "num_experts must be a positive integer"
    if not _is_int(d["top_k"]) or not 1 <= d["top_k"] <= n:
        return f"top_k must be an integer in 1..{n}"
    experts = d["experts"]
    if experts is not None and (
        not isinstance(experts, list) or len(experts) != n
        or not all(isinstance(x, str) for x in experts)
    ):  # fmt: skip
        return f"experts must be null or a list of {n} names"
    off = d["opt_out"]
    if not isinstance(off, list) or not all(_is_int(e) and 0 <= e < n for e in off):
        return f"opt_out must be a list of expert ids in 0..{n - 1}"
    if not isinstance(d["info"], dict):
        return "info must be an object"
    tokens = d["tokens"]
    if not isinstance(tokens, dict) or set(tokens) != set(domains):
        return "tokens must have one count per domain"
    if not all(_is_int(t) and t > 0 for t in tokens.values()):
        return "tokens must be positive integers"
    layers = None
    for name, total in (("share", d["top_k"]), ("probability", 1)):
        table = d[name]
        if not isinstance(table, dict) or set(table) != set(domains):
            return f"{name} must have one table per domain"
        for domain, rows in table.items():
            if problem := _table_problem(rows, n, total, off):
                return f"{name}[{domain!r}] {problem}"
            if layers is not None and len(rows) != layers:
                return f"{name}[{domain!r}] has {len(rows)} layers, others {layers}"
            layers = len(rows)
    return None


def _table_problem(rows: Any, n: int, total: float, off: List[int]) -> Optional[str]:
    if not isinstance(rows, list) or not rows:
        return "must be a non-empty list of layers"
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n:
            return f"layer {i} must list {n} experts"
        if not all(_is_number(x) and 0 <= x <= 1 for x in row):
            return f"layer {i} has a value that is not a number in [0, 1]"
        if abs(sum(row) - total) > 1e-3:
            return f"layer {i} sums to {sum(row):.6g}, not {total}"
        if any(row[e] != 0 for e in off):
            return f"layer {i} routes to a switched-off expert"
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _LayerCounter:
    """Forward hook on one router: sums of top-k selections and of probabilities per expert."""

    def __init__(self, router: torch.nn.Module):
        if str(getattr(router, "gating_function", "softmax")) != "softmax":
            raise UserError("routing statistics need softmax routers (gating_function=softmax)")
        self.router = router
        self.total = getattr(router, "total_experts", router.num_experts)
        self.selected = torch.zeros(self.total, dtype=torch.float64)
        self.probability = torch.zeros(self.total, dtype=torch.float64)
        self.tokens = 0

    def reset(self) -> None:
        self.selected.zero_()
        self.probability.zero_()
        self.tokens = 0

    def __call__(self, router: Any, args: Any, output: Any) -> None:
        active = torch.tensor(getattr(router, "active_experts", range(self.total)))
        indices = output[1].reshape(-1, router.top_k).cpu()  # over the experts that are on
        probs = router.get_expert_logits(args[0]).float().softmax(-1)
        probs = probs.reshape(-1, len(active)).to(torch.float64).cpu()
        counts = torch.bincount(indices.flatten(), minlength=len(active)).to(torch.float64)
        self.selected.index_add_(0, active, counts)
        self.probability.index_add_(0, active, probs.sum(0))
        self.tokens += probs.shape[0]

    def table(self) -> Dict[str, List[float]]:
        return {
            "share": (self.selected / self.tokens).tolist(),
            "probability": (self.probability / self.tokens).tolist(),
        }


def _routers(model: Transformer) -> List[torch.nn.Module]:
    out = []
    for i, block in enumerate(model.blocks.values()):
        moe = getattr(block, "feed_forward_moe", None)
        if moe is None:
            raise UserError(f"layer {i} of the model has no MoE, so no routing to measure")
        out.append(moe.router)
    return out


def routing_statistics(
    model: Transformer,
    batches_by_domain: Mapping[str, Sequence[torch.Tensor]],
    *,
    opt_out: Sequence[int] = (),
    experts: Optional[Sequence[str]] = None,
    progress: bool = False,
) -> RoutingStatistics:
    """Routing statistics of ``model`` on each domain's batches of token ids (each ``(batch,
    seq_len)``), in eval mode without gradients. ``opt_out``: experts to switch off while
    measuring (the model's own setting is restored after); ``experts``: names, public first."""
    from .optout import set_opt_out

    routers = _routers(model)
    previous = list(getattr(routers[0], "opt_out", []))
    counters = [_LayerCounter(r) for r in routers]
    handles = [r.register_forward_hook(c) for r, c in zip(routers, counters)]
    share: Dict[str, Table] = {}
    probability: Dict[str, Table] = {}
    tokens: Dict[str, int] = {}
    try:
        if opt_out:
            set_opt_out(model, list(opt_out))
        for domain, batches in batches_by_domain.items():
            for c in counters:
                c.reset()
            run_batches(model, batches, progress=progress, description=f"routing {domain}")
            if counters[0].tokens == 0:
                raise UserError(f"no tokens for domain {domain!r}: give at least one sequence")
            tables = [c.table() for c in counters]
            share[domain] = [t["share"] for t in tables]
            probability[domain] = [t["probability"] for t in tables]
            tokens[domain] = counters[0].tokens
        top_k = max(r.top_k for r in routers)
        off = list(getattr(routers[0], "opt_out", []))
    finally:
        for h in handles:
            h.remove()
        if opt_out:
            set_opt_out(model, previous)
    return RoutingStatistics(
        domains=list(batches_by_domain), num_experts=counters[0].total, top_k=top_k,
        tokens=tokens, share=share, probability=probability,
        experts=list(experts) if experts is not None else None, opt_out=off,
    )  # fmt: skip


def checkpoint_routing(
    checkpoint: PathLike,
    token_globs: Mapping[str, Union[str, Sequence[str]]],
    *,
    seq_len: int,
    num_seqs: int,
    opt_out: Sequence[int] = (),
    experts: Optional[Sequence[str]] = None,
    batch_size: int = 8,
    dtype: Optional[str] = None,
    progress: bool = False,
) -> RoutingStatistics:
    """Routing statistics of ``checkpoint``'s model on ``num_seqs`` windows of ``seq_len`` tokens
    per domain (name -> globs of token files), read like :func:`compute_domain_embeddings` does."""
    from ..checkpoint import load_model, resolve_checkpoint

    domains = read_domain_windows(
        checkpoint, token_globs, seq_len=seq_len, num_seqs=num_seqs, dtype=dtype
    )
    model = load_model(checkpoint)
    batches = {name: list(ids.split(batch_size)) for name, (_, ids) in domains.items()}
    stats = routing_statistics(model, batches, opt_out=opt_out, experts=experts, progress=progress)
    stats.info = {
        "checkpoint": str(resolve_checkpoint(checkpoint)),
        "data": [
            {"name": name, "paths": files.paths, "fingerprint": files.fingerprint()}
            for name, (files, _) in domains.items()
        ],
        "seq_len": seq_len,
        "num_seqs": num_seqs,
    }
    return stats
