"""The demo's composition step: a second domain expert (code), trained apart from the math expert
from the same public model, merged with it into one public + math + code MoE
(:func:`olmo_flex_ext.compose.merge_experts`, router rows from the domain embeddings), its routers
tuned on a small mix of the domains' data (router-only training, FlexOlmo's router tuning), and
evaluated on both domains with every expert on and with each domain expert switched off
(:func:`olmo_flex_ext.compose.set_opt_out`).

Composition rows (``DIR/composition.json``): ``name``, ``experts`` (the experts that are on),
``expert_widths``, ``total_params``, ``math_accuracy``, ``math_loss``, ``code_loss``,
``general_loss``.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .config import DOMAINS
from .runner import Job

if TYPE_CHECKING:
    from .pipeline import Demo

__all__ = ["merge_job", "router_job", "composition_jobs", "COMPOSITION_FIELDS"]

COMPOSITION_FIELDS = (
    "name", "experts", "expert_widths", "total_params", "math_accuracy", "math_loss",
    "code_loss", "general_loss",
)  # fmt: skip


def merge(demo: Demo, full: str, code: str, embeddings: str) -> Dict[str, Any]:
    from ..compose import merge_experts

    out = merge_experts(
        [full, code], demo.path("models", "merged"), top_k=demo.config.merge_top_k,
        router_from=embeddings, overwrite=True, progress=False,
    )  # fmt: skip
    return {"checkpoint": str(out)}


def merge_job(demo: Demo, full: str, code: str, embeddings: str) -> Job:
    """Merge the math and code experts (public expert first; router rows: domain embeddings)."""
    r = demo.runner
    return Job(
        "merge",
        {"top_k": demo.config.merge_top_k, "after": r.upstream("math-expert", "code-expert")},
        partial(merge, demo, full, code, embeddings),
    )


def tune_router(demo: Demo, merged: str) -> Dict[str, Any]:
    from ..checkpoint import resolve_checkpoint
    from .runs import router_tuning_experiment, run_experiment

    folder = demo.path("runs", "router-tuning")
    experiment = router_tuning_experiment(
        demo.config, demo.data, folder, merged=merged, domains=list(DOMAINS)
    )
    run_experiment(experiment)
    return {"checkpoint": str(resolve_checkpoint(folder))}


def router_job(demo: Demo, merged: str) -> Job:
    """Router-only training of the merged model on general, math and code data."""
    r = demo.runner
    return Job(
        "router-tuning",
        {"run": asdict(demo.config.router), "after": r.upstream("merge")},
        partial(tune_router, demo, merged),
        [demo.path("runs", "router-tuning")],
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
    *,
    public: str,
    full: str,
    code: str,
    merged: str,
    tuned: str,
) -> List[Job]:
    """The stages that evaluate the composition rows, one per row (independent)."""
    r = demo.runner
    by_name = {row["name"]: row for row in rows}
    # (row, experts on, checkpoint, experts switched off, stage it comes after, results row whose
    # math and general numbers it shares)
    plan = [
        ("public", ["public"], public, [], "public", "public"),
        ("math expert", ["public", "math"], full, [], "math-expert", "full"),
        ("code expert", ["public", "code"], code, [], "code-expert", None),
        ("merged", ["public", "math", "code"], merged, [], "merge", None),
        ("merged + router tuning", ["public", "math", "code"], tuned, [], "router-tuning", None),
        ("tuned, math opted out", ["public", "code"], tuned, [1], "router-tuning", None),
        ("tuned, code opted out", ["public", "math"], tuned, [2], "router-tuning", None),
    ]
    jobs = []
    for name, experts, checkpoint, off, after, shared_name in plan:
        shared = by_name[shared_name] if shared_name else None
        made_from = {"eval": demo.eval_settings(), "opt_out": off, "after": r.upstream(after)}
        if shared is not None:
            made_from["shared"] = shared
        stage = "compose-" + "-".join(name.replace(",", "").replace("+", "").split())
        jobs.append(
            Job(stage, made_from, partial(evaluate, demo, name, experts, checkpoint, off, shared))
        )
    return jobs
