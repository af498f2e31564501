"""The demo's routing stage: where the routers of the expert, merged and tuned models send the
held-out general, math and code tokens (:func:`olmo_flex_ext.compose.checkpoint_routing`), per
layer and per expert. ``DIR/routing.json`` maps each model's name to its statistics
(:meth:`~olmo_flex_ext.compose.RoutingStatistics.to_json`)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple

from .config import DOMAINS
from .runner import Job

if TYPE_CHECKING:
    from ..compose.routing import RoutingStatistics
    from .pipeline import Demo

__all__ = ["ROUTING_MODELS", "routing_job", "load_routing", "routing_summary"]

MERGED = ["public", "math", "code"]
ROUTING_MODELS: Tuple[Tuple[str, List[str], str, Tuple[int, ...]], ...] = (
    ("math expert", ["public", "math"], "full", ()),
    ("code expert", ["public", "code"], "code", ()),
    ("merged", MERGED, "merged", ()),
    ("merged + router tuning", MERGED, "tuned", ()),
    ("tuned, code opted out", MERGED, "tuned", (2,)),
    ("tuned, math opted out", MERGED, "tuned", (1,)),
)
"""(model name, expert names, checkpoint key, experts switched off)."""


def stage_routing(demo: Demo, checkpoints: Mapping[str, str]) -> Dict[str, Any]:
    """Routing statistics of every model of :data:`ROUTING_MODELS` on the held-out data."""
    from ..compose import checkpoint_routing

    c = demo.config
    globs = {d: demo.data.token_glob(f"{d}-eval") for d in DOMAINS}
    return {
        name: checkpoint_routing(
            checkpoints[key],
            globs,
            seq_len=c.seq_len,
            num_seqs=c.eval_windows,
            opt_out=off,
            experts=experts,
        ).to_json()  # fmt: skip
        for name, experts, key, off in ROUTING_MODELS
    }


def routing_job(demo: Demo, *, full: str, code: str, merged: str, tuned: str) -> Job:
    """The ``routing`` stage (after the experts, the merge and the router tuning)."""
    r = demo.runner
    checkpoints = {"full": full, "code": code, "merged": merged, "tuned": tuned}
    made_from = {
        "eval_windows": demo.config.eval_windows,
        "seq_len": demo.config.seq_len,
        "models": [list(m) for m in ROUTING_MODELS],
        "after": r.upstream("math-expert", "code-expert", "merge", "router-tuning"),
    }
    return Job("routing", made_from, partial(stage_routing, demo, checkpoints))


def load_routing(outputs: Mapping[str, Any], source: str) -> Dict[str, RoutingStatistics]:
    """The statistics by model name from the stage's outputs (or ``routing.json``)."""
    from ..compose import RoutingStatistics

    return {
        name: RoutingStatistics.from_json(data, f"{source} ({name})")
        for name, data in outputs.items()
    }


def domain_share(stats: RoutingStatistics, domain: str, expert: str) -> float:
    """The share of ``domain``'s tokens routed to ``expert`` (by name), mean over layers."""
    return stats.layer_mean(stats.share, domain)[stats.expert_names().index(expert)]


def routing_summary(
    outputs: Mapping[str, Any], models: Sequence[str] = ("merged", "merged + router tuning")
) -> str:
    """The stage's line: per model, the share of math and code tokens sent to their experts."""
    stats = load_routing(outputs, "routing stage")
    parts = [
        f"{m}: math->math {domain_share(stats[m], 'math', 'math'):.2f}, "
        f"code->code {domain_share(stats[m], 'code', 'code'):.2f}"
        for m in models
        if m in stats
    ]
    return "; ".join(parts)
