"""Choosing expert widths and the neurons that survive.

- :func:`uniform_widths`: one width per expert, the same in every layer (``[11008, 5504]``).
- :func:`allocate_widths`: widths per layer and expert chosen by importance under a neuron budget
  for one expert or several together, each a multiple of ``multiple`` (or the full width) and at
  least ``min_width``; :func:`allocate_for_budget` with the budget as a uniform width or a
  parameter count (what ``olmo-flex allocate/prune`` and the pruning callback use).
- :func:`keep_indices`: each expert's top-``width`` neurons, in their original order.

Scores are made comparable across layers before allocation by
:meth:`~olmo_flex_ext.prune.scores.ImportanceScores.normalized` (default ``layer``: every layer's
scores, all experts together, sum to 1). The allocation then maximises the sum over layers of the
share of each layer's importance that is kept. Kept importance grows with width with diminishing
returns (sorted scores), so adding chunks of ``multiple`` neurons greedily by importance gained per
neuron is optimal for equal-sized chunks.

Widths count neurons; an expert neuron costs ``3 * d_model`` parameters (rows of w1, w2 and w3).
"""

from __future__ import annotations

import heapq
import math
from typing import List, Optional, Sequence

import torch

from ..errors import UserError
from .scores import ImportanceScores, top_neurons

__all__ = [
    "PUBLIC_EXPERT",
    "top_neurons",
    "keep_indices",
    "uniform_widths",
    "check_widths",
    "allocate_widths",
    "allocate_for_budget",
    "budget_neurons_for_width",
    "neurons_for_params",
    "parse_count",
    "kept_fraction",
]

PUBLIC_EXPERT = 0
"""FlexOlmo's public expert: never pruned unless asked."""


def keep_indices(
    scores: ImportanceScores, widths: Sequence[Sequence[int]]
) -> List[List[torch.Tensor]]:
    """Per layer and expert, the neurons to keep for ``widths`` (one list per layer)."""
    return [
        [top_neurons(s, int(w)) for s, w in zip(layer_scores, layer_widths)]
        for layer_scores, layer_widths in zip(scores.scores, widths)
    ]


def kept_fraction(scores: torch.Tensor, width: int) -> float:
    """Share of an expert's total score held by its top-``width`` neurons."""
    total = float(scores.double().sum())
    kept = float(scores.double()[top_neurons(scores, width)].sum())
    return kept / total if total > 0 else 1.0


def check_widths(
    original: Sequence[Sequence[int]],
    target: Sequence[Sequence[int]],
    *,
    prune_public: bool = False,
) -> None:
    """Refuse target widths that are not a pruning of ``original`` (UserError naming the layer)."""
    if len(target) != len(original):
        raise UserError(
            f"widths are given for {len(target)} layers but the model has {len(original)}"
        )
    for i, (orig, new) in enumerate(zip(original, target)):
        if len(new) != len(orig):
            raise UserError(
                f"{len(new)} widths {list(new)} for {len(orig)} experts (layer {i} widths "
                f"{list(orig)}): give exactly one width per expert, e.g. --widths "
                + ",".join(str(w) for w in [orig[0]] + [max(1, w // 2) for w in orig[1:]])
            )
        for e, (o, w) in enumerate(zip(orig, new)):
            if not isinstance(w, int) or w <= 0:
                raise UserError(
                    f"width {w} for expert {e} (layer {i}) is not a positive number of neurons"
                )
            if w > o:
                raise UserError(
                    f"width {w} for expert {e} (layer {i}) is larger than its original width {o}; "
                    "pruning can only remove neurons"
                )
            if e == PUBLIC_EXPERT and w != o and not prune_public:
                raise UserError(
                    f"the public expert (expert 0) would shrink from {o} to {w} in layer {i}; "
                    f"keep it at {o} or pass --prune-public to prune it too"
                )


def uniform_widths(
    original: Sequence[Sequence[int]], widths: Sequence[int], *, prune_public: bool = False
) -> List[List[int]]:
    """The same width list in every layer, checked against the original widths."""
    target = [list(widths) for _ in original]
    check_widths(original, target, prune_public=prune_public)
    return target


def budget_neurons_for_width(n_layers: int, experts: Sequence[int], width: int) -> int:
    """The neurons of ``experts`` at ``width`` in every layer (the budget of a uniform model)."""
    return n_layers * len(experts) * width


def neurons_for_params(params: int, d_model: int) -> int:
    """Expert neurons that ``params`` parameters buy (3 * d_model per neuron, rounded down)."""
    return params // (3 * d_model)


def parse_count(text: str) -> int:
    """``2.2B``, ``800M``, ``1.5e9``, ``123456`` -> an integer."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:].upper(), 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise UserError(f"cannot read {text!r} as a count; use e.g. 2.2B, 800M or 1.5e9") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"budget {text!r} must be a positive count")
    return int(value)


def allocate_widths(
    scores: ImportanceScores,
    budget_neurons: int,
    *,
    experts: Optional[Sequence[int]] = None,
    multiple: int = 128,
    min_width: Optional[int] = None,
    normalize: str = "layer",
) -> List[List[int]]:
    """Widths per layer and expert that keep the most (normalised) importance.

    :param budget_neurons: Total neurons of ``experts`` over all layers (the others keep their
        width and do not count).
    :param experts: Experts to prune; default all but the public expert 0.
    :param multiple: Every pruned width is a multiple of this, or the expert's full width.
    :param min_width: Smallest width per layer and expert (default ``multiple``; capped at the
        expert's full width); must be a multiple of ``multiple``.
    """
    original = scores.widths
    n_experts = len(original[0])
    experts = list(range(1, n_experts)) if experts is None else sorted(set(experts))
    if not experts or any(not 0 <= e < n_experts for e in experts):
        raise UserError(f"experts to prune {experts} must be among 0..{n_experts - 1}")
    if multiple <= 0:
        raise UserError(f"--multiple must be positive, got {multiple}")
    min_width = multiple if min_width is None else min_width
    if min_width <= 0 or min_width % multiple:
        raise UserError(
            f"minimum width {min_width} must be a positive multiple of {multiple} (--multiple)"
        )
    norm = scores.normalized(normalize)

    slots = [(i, e) for i in range(len(original)) for e in experts]
    width = {s: min(min_width, original[s[0]][s[1]]) for s in slots}
    floor = sum(width.values())
    if budget_neurons < floor:
        raise UserError(
            f"the budget of {budget_neurons:,d} neurons is below the {floor:,d} that the minimum "
            f"width {min_width} needs ({len(original)} layers x experts {experts}); raise the "
            "budget or lower --min-width"
        )
    cum = {s: torch.cumsum(torch.sort(norm[s[0]][s[1]], descending=True).values, 0) for s in slots}

    def step(s):
        w, full = width[s], original[s[0]][s[1]]
        if w >= full:
            return None
        nxt = min(full, (w // multiple + 1) * multiple)
        gain = float(cum[s][nxt - 1] - (cum[s][w - 1] if w > 0 else 0.0))
        return (-gain / (nxt - w), s, nxt)

    heap = [c for s in slots if (c := step(s)) is not None]
    heapq.heapify(heap)
    left = budget_neurons - floor
    while heap:
        _, s, nxt = heapq.heappop(heap)
        cost = nxt - width[s]
        if cost > left:
            continue  # this expert's next chunk does not fit; smaller ones elsewhere may
        width[s], left = nxt, left - cost
        if (c := step(s)) is not None:
            heapq.heappush(heap, c)
    return [[width.get((i, e), w) for e, w in enumerate(layer)] for i, layer in enumerate(original)]


def allocate_for_budget(
    scores: ImportanceScores,
    *,
    budget_width: Optional[int] = None,
    budget_params: Optional[int] = None,
    d_model: Optional[int] = None,
    experts: Optional[Sequence[int]] = None,
    multiple: int = 128,
    min_width: Optional[int] = None,
    normalize: str = "layer",
) -> List[List[int]]:
    """:func:`allocate_widths` under a budget given as a uniform width (as many neurons as
    ``experts`` at ``budget_width`` in every layer) or as the parameters of the pruned experts'
    MLPs (``budget_params``; 3 * ``d_model`` per neuron). ``experts`` default to all but 0."""
    experts = list(experts) if experts else list(range(1, len(scores.widths[0])))
    if (budget_width is None) == (budget_params is None):
        raise UserError("give exactly one budget: a uniform width or a parameter count")
    if budget_width is not None:
        if budget_width <= 0:
            raise UserError(f"--budget-width must be positive, got {budget_width}")
        budget = budget_neurons_for_width(scores.num_layers, experts, budget_width)
    else:
        if not d_model:
            raise UserError(
                "a parameter budget needs the model's d_model; use --budget-width instead"
            )
        budget = neurons_for_params(int(budget_params), d_model)  # type: ignore[arg-type]
    return allocate_widths(
        scores, budget, experts=experts, multiple=multiple, min_width=min_width, normalize=normalize
    )
