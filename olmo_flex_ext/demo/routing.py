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
    from .composition import Group
    from .pipeline import Demo

__all__ = ["routing_models", "routing_job", "load_routing", "routing_summary"]

MERGED = ["public", "math", "code"]
Model = Tuple[str, List[str], str, Tuple[int, ...]]
"""(model name, expert names, checkpoint, experts switched off)."""


def routing_models(merges: Sequence[Tuple[Group, str, str]], code: str) -> List[Model]:
    """The models whose routing the stage measures: the code expert, and per composition group
    (:class:`.composition.Group`, merged and tuned checkpoints) its math expert, the merged and
    the tuned model, and the tuned model with each domain expert opted out."""
    out: List[Model] = []
    for i, (g, merged, tuned) in enumerate(merges):
        out.append((g.expert_row, ["public", "math"], g.math, ()))
        if i == 0:
            out.append(("code expert", ["public", "code"], code, ()))
        out += [
            (g.name("merged"), MERGED, merged, ()),
            (g.name("merged + router tuning"), MERGED, tuned, ()),
            (g.name("tuned, code opted out"), MERGED, tuned, (2,)),
            (g.name("tuned, math opted out"), MERGED, tuned, (1,)),
        ]
    return out


def stage_routing(demo: Demo, models: Sequence[Model]) -> Dict[str, Any]:
    """Routing statistics of ``models`` on the held-out data."""
    from ..compose import checkpoint_routing

    c = demo.config
    globs = {d: demo.data.token_glob(f"{d}-eval") for d in DOMAINS}
    return {
        name: checkpoint_routing(
            checkpoint, globs, seq_len=c.seq_len, num_seqs=c.eval_windows, opt_out=off,
            experts=experts,
        ).to_json()
        for name, experts, checkpoint, off in models
    }  # fmt: skip


def routing_job(demo: Demo, merges: Sequence[Tuple[Group, str, str]], *, code: str) -> Job:
    """The ``routing`` stage (after the experts, the merges and the router tuning)."""
    r = demo.runner
    models = routing_models(merges, code)
    stages = ["code-expert"] + [
        s for g, _, _ in merges for s in (g.stage, g.stage_name("merge"), g.stage_name("router-tuning"))
    ]  # fmt: skip
    made_from = {
        "eval_windows": demo.config.eval_windows,
        "seq_len": demo.config.seq_len,
        "models": [[name, experts, off] for name, experts, _, off in models],
        "after": r.upstream(*stages),
    }
    return Job("routing", made_from, partial(stage_routing, demo, models))


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
