"""The demo's composition step: a second domain expert (code), trained apart from the math expert
from the same public model, merged with it into one public + math + code MoE
(:func:`olmo_flex_ext.compose.merge_experts`; each expert keeps its domain router), its routers
tuned on a small mix of the domains' data (router-only training, FlexOlmo's router tuning), and
evaluated on every domain with every expert on and with each domain expert switched off
(:func:`olmo_flex_ext.compose.set_opt_out`). The same is done with the math expert pruned to half
width and distilled, next to the full code expert: the composition the pruning is for.

Composition rows (``DIR/composition.json``): ``name``, ``experts`` (the experts that are on),
``expert_widths``, ``total_params``, ``math_accuracy``, ``math_loss``, ``code_loss``,
``general_loss``; the targets of :mod:`.targets` are checked on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .config import DOMAINS
from .runner import Job

if TYPE_CHECKING:
    from .pipeline import Demo

__all__ = [
    "Group",
    "row_name",
    "expert_row_name",
    "merge_job",
    "router_job",
    "composition_jobs",
    "COMPOSITION_FIELDS",
]

COMPOSITION_FIELDS = (
    "name", "experts", "expert_widths", "total_params", "math_accuracy", "math_loss",
    "code_loss", "general_loss",
)  # fmt: skip


@dataclass
class Group:
    """One composition: a math expert merged with the code expert, tuned, and opted out.

    ``tag`` names its stages and folders (``""`` for the full math expert); ``expert`` is the
    results row of its math expert and ``stage`` the stage that made it."""

    tag: str
    math: str
    expert: str
    stage: str

    def name(self, row: str) -> str:
        return row_name(self.tag, row)

    def stage_name(self, stage: str) -> str:
        return stage + (f"-{self.tag}" if self.tag else "")

    @property
    def expert_row(self) -> str:
        return expert_row_name(self.tag)


def row_name(tag: str, row: str) -> str:
    """A row name of the group ``tag`` (``""``: the full math expert): ``merged``, ``merged +
    router tuning``, ``tuned, math opted out``... with ``(math TAG)`` after the first word."""
    if not tag:
        return row
    first, comma, rest = row.partition(",")
    head, space, tail = first.partition(" ")
    return f"{head} (math {tag})" + space + tail + comma + rest


def expert_row_name(tag: str) -> str:
    """The composition row of the group's math expert on its own."""
    return "math expert" + (f" (distilled {tag})" if tag else "")


def merge(demo: Demo, group: Group, code: str) -> Dict[str, Any]:
    from ..compose import merge_experts

    out = merge_experts(
        [group.math, code], demo.path("models", group.stage_name("merged")),
        top_k=demo.config.merge_top_k, overwrite=True, progress=False,
    )  # fmt: skip
    return {"checkpoint": str(out)}


def merge_job(demo: Demo, group: Group, code: str) -> Job:
    """Merge the group's math expert and the code expert (public expert first; each expert's
    router row and expert bias as it was trained)."""
    r = demo.runner
    return Job(
        group.stage_name("merge"),
        {"top_k": demo.config.merge_top_k, "after": r.upstream(group.stage, "code-expert")},
        partial(merge, demo, group, code),
    )


def tune_router(demo: Demo, group: Group, merged: str) -> Dict[str, Any]:
    from ..checkpoint import resolve_checkpoint
    from .runs import router_tuning_experiment, run_experiment

    folder = demo.path("runs", group.stage_name("router-tuning"))
    experiment = router_tuning_experiment(
        demo.config, demo.data, folder, merged=merged, domains=list(DOMAINS)
    )
    run_experiment(experiment)
    return {"checkpoint": str(resolve_checkpoint(folder))}


def router_job(demo: Demo, group: Group, merged: str) -> Job:
    """Router-only training of the merged model on general, math and code data."""
    r, name = demo.runner, group.stage_name("router-tuning")
    return Job(
        name,
        {"run": asdict(demo.config.router), "after": r.upstream(group.stage_name("merge"))},
        partial(tune_router, demo, group, merged),
        [demo.path("runs", name)],
    )


def evaluate(
    demo: Demo,
    name: str,
    experts: List[str],
    checkpoint: str,
    off: Sequence[int],
    shared: Optional[Dict[str, Any]],
) -> Dict[str, Any]:
    """A composition row; ``shared``: a results row of the same model whose math and general
    numbers are reused (only the code loss is computed)."""
    from ..checkpoint import read_model_config
    from .evaluate import evaluate_checkpoint
    from .results import model_row_fields

    if shared is None:
        scores = evaluate_checkpoint(
            checkpoint, demo.data, demo.config, metrics=("math", "general", "code"), opt_out=off
        )
    else:
        scores = dict(shared)
        scores.update(evaluate_checkpoint(checkpoint, demo.data, demo.config, metrics=("code",)))
    fields = model_row_fields(read_model_config(checkpoint))
    return dict(
        name=name, experts=experts, expert_widths=fields["expert_widths"],
        total_params=fields["total_params"], **{k: scores[k] for k in COMPOSITION_FIELDS[4:]},
    )  # fmt: skip


def composition_jobs(
    demo: Demo,
    rows: List[Dict[str, Any]],
    group: Group,
    *,
    merged: str,
    tuned: str,
    public: Optional[str] = None,
    code: Optional[str] = None,
) -> List[Job]:
    """Evaluation jobs of a group's rows: its math expert, the merged and tuned models and the
    opt-outs (and, given ``public`` and ``code``, the public model and the code expert)."""
    r = demo.runner
    by_name = {row["name"]: row for row in rows}
    # (row, experts on, checkpoint, experts switched off, stage it comes after, results row whose
    # math and general numbers it shares)
    tuning = group.stage_name("router-tuning")
    plan = [(group.expert_row, ["public", "math"], group.math, [], group.stage, group.expert)]
    if public is not None and code is not None:
        plan.insert(0, ("public", ["public"], public, [], "public", "public"))
        plan.append(("code expert", ["public", "code"], code, [], "code-expert", None))
    plan += [
        (group.name("merged"), ["public", "math", "code"], merged, [], group.stage_name("merge"),
         None),
        (group.name("merged + router tuning"), ["public", "math", "code"], tuned, [], tuning, None),
        (group.name("tuned, math opted out"), ["public", "code"], tuned, [1], tuning, None),
        (group.name("tuned, code opted out"), ["public", "math"], tuned, [2], tuning, None),
    ]  # fmt: skip
    jobs = []
    for name, experts, checkpoint, off, after, shared_name in plan:
        shared = by_name[shared_name] if shared_name else None
        made_from = {"eval": demo.eval_settings(), "opt_out": off, "after": r.upstream(after)}
        if shared is not None:
            made_from["shared"] = shared
        stage = "compose-" + "-".join(
            name.replace(",", "").replace("+", "").replace("(", "").replace(")", "").split()
        )
        jobs.append(
            Job(stage, made_from, partial(evaluate, demo, name, experts, checkpoint, off, shared))
        )
    return jobs
