"""The composition targets: a merged model keeps each expert's skill, and opting an expert out
gives its domain back to the public model while the other domains keep theirs.

Each target compares one number of a composition row with a reference row's and holds when the
ratio is within its limit (losses: ``ratio <= limit``; accuracy: ``ratio >= limit``). They are
checked for every group of :mod:`.composition` (the full math expert, and the distilled one
against its own numbers), on held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

from .composition import expert_row_name, row_name

__all__ = ["CompositionTargets", "Target", "composition_targets"]


@dataclass
class CompositionTargets:
    """Limits on loss ratios (and the accuracy ratio) of the composition rows."""

    merged: float = 1.15
    """Merged, no router tuning: each domain's loss over its own expert's (general: public)."""
    tuned_domain: float = 1.05
    """Merged + router tuning: math and code loss over their experts'."""
    tuned_general: float = 1.10
    """Merged + router tuning: general loss over the public model's."""
    kept: float = 1.05
    """Opt-out: the remaining domain expert's loss over the tuned model's."""
    back: float = 1.15
    """Opt-out: the opted-out domain's loss over the public model's."""
    accuracy: float = 0.9
    """Merged (and tuned) math accuracy over the math expert's (at least)."""


@dataclass
class Target:
    """One checked target: ``row``'s ``metric`` against ``reference``'s."""

    row: str
    metric: str
    reference: str
    ratio: float
    limit: float
    at_least: bool = False

    @property
    def holds(self) -> bool:
        return self.ratio >= self.limit if self.at_least else self.ratio <= self.limit

    @property
    def text(self) -> str:
        sign = ">=" if self.at_least else "<="
        return (
            f"{self.row}: {self.metric.replace('_', ' ')} {self.ratio:.3f}x {self.reference}'s "
            f"(target {sign} {self.limit:.2f}x)"
        )


def composition_targets(
    rows: Sequence[Dict[str, Any]],
    tags: Sequence[str],
    limits: CompositionTargets = CompositionTargets(),
) -> List[Target]:
    """The targets of every composition group (``tags``, see :class:`.composition.Group`) whose
    rows are all present."""
    by_name = {r["name"]: r for r in rows}
    out: List[Target] = []
    for tag in tags:
        names = [expert_row_name(tag)] + [
            row_name(tag, n)
            for n in ("merged", "merged + router tuning", "tuned, math opted out",
                      "tuned, code opted out")
        ]  # fmt: skip
        if any(n not in by_name for n in names + ["public", "code expert"]):
            continue
        expert, merged, tuned, math_off, code_off = names
        checks = [
            (merged, "math_loss", expert, limits.merged),
            (merged, "code_loss", "code expert", limits.merged),
            (merged, "general_loss", "public", limits.merged),
            (tuned, "math_loss", expert, limits.tuned_domain),
            (tuned, "code_loss", "code expert", limits.tuned_domain),
            (tuned, "general_loss", "public", limits.tuned_general),
            (math_off, "code_loss", tuned, limits.kept),
            (math_off, "math_loss", "public", limits.back),
            (code_off, "math_loss", tuned, limits.kept),
            (code_off, "code_loss", "public", limits.back),
        ]
        for row, metric, ref, limit in checks:
            ratio = by_name[row][metric] / by_name[ref][metric]
            out.append(Target(row, metric, ref, ratio, limit))
        for row in (merged, tuned):
            ratio = by_name[row]["math_accuracy"] / max(by_name[expert]["math_accuracy"], 1e-9)
            out.append(Target(row, "math_accuracy", expert, ratio, limits.accuracy, True))
    return out
