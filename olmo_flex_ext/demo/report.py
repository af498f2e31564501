"""The demo's tables and report: the results, composition and routing tables (Markdown for
``report.md``, rich for the terminal), ``results.json``, ``composition.json``, ``routing.json`` and
``report.md`` with the checks of :mod:`.results`, the plots of :mod:`.plots` and the time each
stage took."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..atomic import write_atomic
from .plots import plot_curves, plot_overlap, plot_routing, plot_widths
from .results import ResultRow, Widths, check_claims, validate_results
from .targets import Target, composition_targets

if TYPE_CHECKING:
    from ..compose.routing import RoutingStatistics
    from .pipeline import Demo

__all__ = [
    "markdown_table",
    "composition_markdown",
    "targets_markdown",
    "routing_markdown",
    "print_tables",
    "write_report",
    "demo_report",
    "write_json",
    "widths_text",
]


def write_json(path: Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2) + "\n")


def curve(run_folder: Path, metric: str) -> Dict[int, float]:
    """``{step: value}`` of one metric from a run folder's ``metrics.jsonl``."""
    from ..train.callbacks import read_metrics

    return {step: m[metric] for step, m in read_metrics(run_folder).items() if metric in m}


def markdown_table(rows: Sequence[ResultRow]) -> str:
    """The results table in Markdown."""
    head = "| model | kind | expert widths | total params | expert params | math acc | math loss | general loss |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.kind} | {widths_text(r.expert_widths)} | {r.total_params:,} | "
            f"{r.expert_params:,} | {r.math_accuracy:.3f} | {r.math_loss:.3f} | {r.general_loss:.3f} |"
        )
    return "\n".join(lines)


def widths_text(w: Widths) -> str:
    """``384 + 192``, or ``384 + per layer 200, 192, 184`` when layers differ."""
    if w and isinstance(w[0], list):
        domain = ", ".join("+".join(str(v) for v in x[1:]) for x in w)  # type: ignore[index]
        return f"{w[0][0]} + per layer {domain}"  # type: ignore[index]
    return " + ".join(str(x) for x in w)


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


def targets_markdown(targets: Sequence[Target]) -> str:
    """The composition targets as a checklist, with how many hold."""
    held = sum(t.holds for t in targets)
    lines = [f"{held} of {len(targets)} composition targets hold:", ""]
    return "\n".join(lines + [f"- [{'x' if t.holds else ' '}] {t.text}" for t in targets])


def _per_expert(values: Sequence[float], off: Sequence[int]) -> str:
    return " / ".join("off" if e in off else f"{v:.2f}" for e, v in enumerate(values))


def routing_markdown(stats: Mapping[str, RoutingStatistics]) -> str:
    """Per model (by name) and domain: each expert's share of the domain's tokens (mean over
    layers, then per layer) and its mean router probability (mean over layers)."""
    lines = [
        "| model | domain | experts | share of tokens | share per layer | mean probability |",
        "|---|---|---|---|---|---|",
    ]
    for name, st in stats.items():
        for d in st.domains:
            per_layer = "; ".join(_per_expert(row, st.opt_out) for row in st.share[d])
            lines.append(
                f"| {name} | {d} | {' / '.join(st.expert_names())} | "
                f"{_per_expert(st.layer_mean(st.share, d), st.opt_out)} | {per_layer} | "
                f"{_per_expert(st.layer_mean(st.probability, d), st.opt_out)} |"
            )
    return "\n".join(lines)


def print_tables(
    rows: List[Dict[str, Any]],
    composition: List[Dict[str, Any]],
    console: Optional[Any] = None,
    targets: Sequence[Target] = (),
) -> None:
    """Both tables and the composition targets on the terminal (``console``: a rich console,
    default stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    table = Table(title="results")
    for col in ("name", "kind", "expert widths", "params", "expert params", "math acc",
                "math loss", "general loss"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], r["kind"], widths_text(r["expert_widths"]), f"{r['total_params']:,}",
            f"{r['expert_params']:,}", f"{r['math_accuracy']:.3f}", f"{r['math_loss']:.3f}",
            f"{r['general_loss']:.3f}",
        )  # fmt: skip
    console.print(table)
    table = Table(title="composition and opt-out")
    for col in ("name", "experts on", "math acc", "math loss", "code loss", "general loss"):
        table.add_column(col)
    for r in composition:
        table.add_row(
            r["name"], " + ".join(r["experts"]), f"{r['math_accuracy']:.3f}",
            f"{r['math_loss']:.3f}", f"{r['code_loss']:.3f}", f"{r['general_loss']:.3f}",
        )  # fmt: skip
    console.print(table)
    if targets:
        held = sum(t.holds for t in targets)
        console.print(f"composition targets: {held} of {len(targets)} hold")
        for t in targets:
            console.print(f"  {'pass' if t.holds else 'FAIL'}  {t.text}", highlight=False)


def write_report(
    out: Union[str, Path],
    rows: Sequence[ResultRow],
    *,
    title: str = "Variable FlexOlmo demo",
    curves: Optional[Mapping[str, Mapping[str, Mapping[int, float]]]] = None,
    overlap: Optional[Mapping[int, Sequence[float]]] = None,
    allocation: Optional[Mapping[str, Sequence[int]]] = None,
    routing: Optional[Mapping[str, RoutingStatistics]] = None,
    sections: Sequence[Tuple[str, str]] = (),
    notes: Sequence[str] = (),
    margin: float = 0.05,
    accuracy: bool = True,
) -> Path:
    """Write ``out/results.json``, plots under ``out/plots/`` and ``out/report.md``.

    :param curves: plot title -> label -> {step: value}, one PNG each (e.g. distillation loss per
        width, or the public model's training loss).
    :param overlap: W -> per-layer overlap of the top-W sets of math vs general calibration.
    :param allocation: label -> domain-expert width per layer.
    :param routing: model name -> routing statistics, plotted per layer and domain.
    :param sections: ``(title, markdown)`` added after the checks (e.g. the composition table).
    """
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    validate_results([asdict(r) for r in rows])
    md = [f"# {title}", "", markdown_table(rows), ""]
    claims = check_claims(rows, margin=margin, accuracy=accuracy)
    if claims:
        md += ["## Checks", ""]
        md += [f"- [{'x' if c.holds else ' '}] {c.text}: {c.detail}" for c in claims]
        md.append("")
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    images: List[Tuple[str, str]] = []
    for i, (plot_title, by_label) in enumerate((curves or {}).items()):
        name = f"curves-{i}.png"
        plot_curves(plots / name, by_label, title=plot_title, ylabel="loss")
        images.append((plot_title, name))
    if overlap is not None:
        plot_overlap(plots / "calibration-overlap.png", overlap)
        images.append(("Calibration overlap per layer", "calibration-overlap.png"))
    if allocation:
        plot_widths(plots / "width-allocation.png", allocation)
        images.append(("Width allocation", "width-allocation.png"))
    if routing:
        plot_routing(plots / "routing.png", routing)
        images.append(("Routing: share of each domain's tokens per expert", "routing.png"))
    for caption, name in images:
        md += [f"## {caption}", "", f"![{caption}](plots/{name})", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    write_atomic(out / "report.md", "\n".join(md))
    write_atomic(out / "results.json", json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return out / "results.json"


ROUTING_NOTE = (
    "\n\nOn windows spread evenly over the held-out general, math and code token files (as "
    "many as the loss evaluation reads). Share of tokens: the fraction of the domain's tokens whose top-k experts "
    "include the expert (the shares sum to top-k; when top-k is every expert, as in the "
    "two-expert models, each share is 1 and the routing shows only in the probabilities); "
    "per layer: layer 0 first; mean probability: the router's softmax over the experts that "
    "are on, averaged over tokens and layers (`olmo_flex_ext.compose.routing_statistics`). "
    "Also in `routing.json`."
)


def demo_report(
    demo: Demo,
    rows: List[Dict[str, Any]],
    composition: List[Dict[str, Any]],
    importance: Dict[str, Any],
    distilled: Dict[str, Dict[str, Any]],
    routing: Dict[str, Any],
) -> Dict[str, Any]:
    from .routing import load_routing

    c, r = demo.config, demo.runner
    stats = load_routing(routing, "routing stage")
    kl = {
        f"width {name}": curve(demo.path("runs", f"distill-{name}"), "train/KL")
        for name in distilled
    }
    budget = next(v for k, v in distilled.items() if k.startswith("budget"))
    allocation = {
        f"uniform {c.budget_width()}": [c.budget_width()] * c.n_layers,
        f"importance-allocated, budget of width {c.budget_width()}": [
            w[1] for w in budget["widths"]
        ],
    }
    timings = ", ".join(
        f"{k} {v:.0f} s ({r.cpu_timings.get(k, 0.0):.0f} s CPU)" for k, v in r.timings.items()
    )
    total = sum(r.timings.values())
    cpu = sum(r.cpu_timings.values())
    write_json(demo.path("composition.json"), composition)
    write_json(demo.path("routing.json"), routing)
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
        routing={m: stats[m] for m in ("merged", "merged + router tuning")},
        sections=[
            (
                "Composition: public + math + code experts, and opt-out",
                composition_markdown(composition)
                + "\n\nThe code expert was trained apart from the math expert, from the same "
                "public model; `merged` holds both (each expert's domain router: its log-odds "
                f"against public data; top-{c.merge_top_k}); `merged + router tuning` trained "
                f"only its routers for {c.router.steps} steps on a mix of general, math and code "
                "data; each opted-out row switches one domain expert of the tuned model off at "
                "inference (`olmo_flex_ext.compose.set_opt_out`). Rows marked `(math "
                f"{c.composed_width()})` do the same with the math expert distilled at that "
                "width. Rows also in `composition.json`.",
            ),
            (
                "Composition targets",
                targets_markdown(composition_targets(composition, c.composition_tags())),
            ),
            ("Routing: where each domain's tokens go", routing_markdown(stats) + ROUTING_NOTE),
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
    return {
        "results": str(path),
        "composition": str(demo.path("composition.json")),
        "routing": str(demo.path("routing.json")),
    }
