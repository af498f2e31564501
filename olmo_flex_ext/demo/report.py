"""The demo's report: ``results.json`` and ``report.md`` (:func:`olmo_flex_ext.report.write_report`)
with the distillation curves, calibration overlap and width allocation, plus the composition table
(``composition.json`` and a section of ``report.md``) and the time each stage took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

from ..atomic import write_atomic

if TYPE_CHECKING:
    from .pipeline import Demo

__all__ = ["demo_report", "composition_markdown", "write_json"]


def write_json(path: Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2) + "\n")


def curve(run_folder: Path, metric: str) -> Dict[int, float]:
    """``{step: value}`` of one metric from a run folder's ``metrics.jsonl``."""
    from ..callbacks import read_metrics

    return {step: m[metric] for step, m in read_metrics(run_folder).items() if metric in m}


def composition_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """The composition table: each row's experts and its math, code and general numbers."""
    lines = [
        "| model | experts on | math acc | math loss | code loss | general loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {' + '.join(r['experts'])} | {r['math_accuracy']:.3f} | "
            f"{r['math_loss']:.3f} | {r['code_loss']:.3f} | {r['general_loss']:.3f} |"
        )
    return "\n".join(lines)


def demo_report(
    demo: Demo,
    rows: List[Dict[str, Any]],
    composition: List[Dict[str, Any]],
    importance: Dict[str, Any],
    distilled: Dict[str, Dict[str, Any]],
) -> Dict[str, Any]:
    from ..report import ResultRow, write_report

    c, r = demo.config, demo.runner
    kl = {
        f"width {name}": curve(demo.path("runs", f"distill-{name}"), "train/KL")
        for name in distilled
    }
    budget = next(v for k, v in distilled.items() if k.startswith("budget"))
    allocation = {
        f"uniform {c.budget_width()}": [c.budget_width()] * c.n_layers,
        f"importance-allocated, budget of width {c.budget_width()}": [w[1] for w in budget["widths"]],
    }
    timings = ", ".join(
        f"{k} {v:.0f} s ({r.cpu_timings.get(k, 0.0):.0f} s CPU)" for k, v in r.timings.items()
    )
    total = sum(r.timings.values())
    cpu = sum(r.cpu_timings.values())
    write_json(demo.path("composition.json"), composition)
    path = write_report(
        demo.out,
        [ResultRow(**row) for row in rows],
        title="Variable FlexOlmo demo" + (" (quick)" if c.quick else ""),
        curves={
            "distillation: KL(teacher || student), nats per token of math data": kl,
            "public model: training loss on general text": {
                "public": curve(demo.path("runs", "public"), "train/CE loss")
            },
        },
        overlap={int(w): v for w, v in importance["overlap"].items()},
        allocation=allocation,
        sections=[
            (
                "Composition: public + math + code experts, and opt-out",
                composition_markdown(composition)
                + "\n\nThe code expert was trained apart from the math expert, from the same "
                "public model; `merged` holds both (router rows from domain embeddings, "
                f"top-{c.merge_top_k}); `merged + router tuning` trained only its routers for "
                f"{c.router.steps} steps on a mix of general, math and code data; each opted-out "
                "row switches one domain expert of the tuned model off at inference "
                "(`olmo_flex_ext.compose.opt_out`). Rows also in `composition.json`.",
            )
        ],
        notes=[
            f"stage times, wall (CPU): {timings}",
            f"sum of stage times {total:.0f} s wall, {cpu:.0f} s CPU, including earlier "
            "invocations of an interrupted run; stages run side by side (--jobs), so the run "
            "itself took less wall time (the command prints it)",
        ],
        margin=c.margin,
        accuracy=c.claim_accuracy,
    )
    return {"results": str(path), "composition": str(demo.path("composition.json"))}
