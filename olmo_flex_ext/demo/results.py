"""The demo's results: ``results.json`` (the format other tools and CI read) and the claims the
table should support.

``results.json`` is a list of rows (see :class:`ResultRow`); :func:`validate_results` checks a file
or a list against that contract and names every problem it finds; :func:`check_claims` judges the
method's claims on the rows; :func:`model_row_fields` gives a row's widths and parameter counts
from a model config. The tables and ``report.md`` are written by :mod:`.report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = [
    "KINDS",
    "ResultRow",
    "validate_results",
    "check_claims",
    "Claim",
    "model_row_fields",
]

KINDS = ("public", "full", "pruned", "pruned+kd")
"""``public``: no domain expert; ``full``: the unpruned expert; ``pruned``: pruned without
retraining; ``pruned+kd``: pruned, then distilled from the full model."""

Widths = Union[List[int], List[List[int]]]


@dataclass
class ResultRow:
    """One model of the table."""

    name: str
    kind: str
    expert_widths: Widths
    """The MLP width of each expert (public first), or one such list per layer when they differ."""
    total_params: int
    expert_params: int
    """Parameters of the domain experts' MLPs (0 for the public model)."""
    math_accuracy: float
    """Exact-match accuracy of greedy answers on held-out problems, in [0, 1]."""
    math_loss: float
    """Mean loss (nats) on the answer tokens of held-out problems."""
    general_loss: float
    """Mean loss (nats) per token on held-out general text."""


_FIELDS = {f.name for f in fields(ResultRow)}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _widths_problem(w: Any) -> Optional[str]:
    if not isinstance(w, list) or not w:
        return "must be a non-empty list"
    if all(_is_int(x) for x in w):
        return None if all(x > 0 for x in w) else "has a width that is not positive"
    if all(isinstance(x, list) and x and all(_is_int(y) and y > 0 for y in x) for x in w):
        return None if len({len(x) for x in w}) == 1 else "layers have different expert counts"
    return "must be a list of positive ints, or one such list per layer"


def _row_problems(i: int, row: Any) -> List[str]:
    where = f"row {i}"
    if not isinstance(row, dict):
        return [f"{where} is a {type(row).__name__}, not an object"]
    where = f"row {i} ({row.get('name', '?')})"
    out = [f"{where}: missing {k!r}" for k in sorted(_FIELDS - set(row))]
    out += [f"{where}: unknown field {k!r}" for k in sorted(set(row) - _FIELDS)]
    if out:
        return out
    if not isinstance(row["name"], str) or not row["name"]:
        out.append(f"{where}: name must be a non-empty string")
    if row["kind"] not in KINDS:
        out.append(f"{where}: kind {row['kind']!r} is not one of {KINDS}")
    if (p := _widths_problem(row["expert_widths"])) is not None:
        out.append(f"{where}: expert_widths {p}")
    for k in ("total_params", "expert_params"):
        if not _is_int(row[k]) or row[k] < 0:
            out.append(f"{where}: {k} must be a non-negative integer")
    if not out and row["expert_params"] >= row["total_params"]:
        out.append(f"{where}: expert_params must be smaller than total_params")
    if row["kind"] == "public" and row["expert_params"] != 0:
        out.append(f"{where}: a public row has no expert parameters")
    for k in ("math_accuracy", "math_loss", "general_loss"):
        v = row[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            out.append(f"{where}: {k} must be a finite non-negative number")
    if isinstance(row["math_accuracy"], (int, float)) and row["math_accuracy"] > 1:
        out.append(f"{where}: math_accuracy must be a fraction in [0, 1]")
    return out


def validate_results(data: Union[str, Path, Sequence[Any]]) -> List[ResultRow]:
    """Check ``results.json`` (a path or its parsed list) against the contract; return the rows
    or raise ``ValueError`` listing every problem."""
    if isinstance(data, (str, Path)):
        try:
            data = json.loads(Path(data).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read results {data}: {e}") from None
    if not isinstance(data, list) or not data:
        raise ValueError("results must be a non-empty JSON list of rows")
    problems = [p for i, row in enumerate(data) for p in _row_problems(i, row)]
    names = [r.get("name") for r in data if isinstance(r, dict)]
    problems += [
        f"name {n!r} appears more than once"
        for n in sorted({n for n in names if names.count(n) > 1})
    ]
    if problems:
        raise ValueError("invalid results:\n  " + "\n  ".join(problems))
    return [ResultRow(**row) for row in data]


@dataclass
class Claim:
    """One statement the table should support, and whether it does."""

    text: str
    holds: bool
    detail: str


def _domain_widths(row: ResultRow) -> Tuple:
    w = row.expert_widths
    return tuple(tuple(x[1:]) for x in w) if isinstance(w[0], list) else tuple(w[1:])  # type: ignore[index]


def check_claims(
    rows: Sequence[ResultRow], *, margin: float = 0.05, accuracy: bool = True
) -> List[Claim]:
    """The method's claims, judged on the math answer loss (mean nats per answer token on the
    held-out problems: the stable metric at demo scale; accuracy is in each claim's detail):

    - the full expert beats no expert on math: lower answer loss (and, with ``accuracy``, higher
      accuracy);
    - at each pruned width, distillation beats pruning alone: lower answer loss;
    - a distilled expert with ~50% of the full expert's parameters is within ``margin`` of it:
      answer loss at most ``(1 + margin)`` times the full expert's.

    Only claims whose rows exist are checked."""
    by_kind: Dict[str, List[ResultRow]] = {k: [r for r in rows if r.kind == k] for k in KINDS}

    def detail(a: ResultRow, b: ResultRow) -> str:
        return (
            f"answer loss {a.math_loss:.3f} vs {b.math_loss:.3f}, "
            f"accuracy {a.math_accuracy:.3f} vs {b.math_accuracy:.3f}"
        )

    claims: List[Claim] = []
    for full in by_kind["full"]:
        for pub in by_kind["public"]:
            holds = full.math_loss < pub.math_loss
            if accuracy:
                holds = holds and full.math_accuracy > pub.math_accuracy
            claims.append(Claim(f"{full.name} beats {pub.name} on math", holds, detail(full, pub)))
    for kd in by_kind["pruned+kd"]:
        for pr in by_kind["pruned"]:
            if _domain_widths(pr) == _domain_widths(kd):
                claims.append(
                    Claim(
                        f"{kd.name} beats {pr.name} (same widths) on math",
                        kd.math_loss < pr.math_loss,
                        detail(kd, pr),
                    )
                )
    for full in by_kind["full"]:
        for kd in by_kind["pruned+kd"]:
            share = kd.expert_params / max(full.expert_params, 1)
            if abs(share - 0.5) <= 0.05:
                ratio = kd.math_loss / full.math_loss
                claims.append(
                    Claim(
                        f"{kd.name} ({share:.0%} of the expert) within {margin:.0%} of {full.name} "
                        "on math answer loss",
                        ratio <= 1 + margin,
                        f"{detail(kd, full)} (loss ratio {ratio:.3f})",
                    )
                )
    return claims


def model_row_fields(config: Any) -> Dict[str, Any]:
    """``expert_widths``, ``total_params`` and ``expert_params`` of an OLMo-core model config:
    a dense model counts as one (public) expert of its MLP width; domain experts are all experts
    after the first, and their parameters are their MLP rows (3 x d_model per unit of width)."""
    blocks = config.resolved_block_configs
    if all(b.feed_forward_moe is None for b in blocks):
        widths: Widths = sorted({b.feed_forward.hidden_size for b in blocks})
        if len(widths) > 1:
            widths = [[b.feed_forward.hidden_size] for b in blocks]
        return dict(expert_widths=widths, total_params=config.num_params, expert_params=0)
    from ..models import expert_widths_per_layer

    per_layer = expert_widths_per_layer(config)
    domain = sum(sum(w[1:]) for w in per_layer)
    same = all(w == per_layer[0] for w in per_layer)
    return dict(
        expert_widths=per_layer[0] if same else per_layer,
        total_params=config.num_params,
        expert_params=3 * config.d_model * domain,
    )
