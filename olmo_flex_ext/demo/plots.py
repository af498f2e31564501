"""The demo report's plots: PNGs drawn with matplotlib's Agg backend (no display needed), each
written to a temp name and renamed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..atomic import atomic_file

if TYPE_CHECKING:
    from ..compose.routing import RoutingStatistics

__all__ = ["plot_curves", "plot_overlap", "plot_widths", "plot_routing"]


def _plot(path: Path, draw: Any, panels: int = 1) -> None:
    """``draw(ax)``, or with several ``panels`` side by side ``draw(list of axes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, panels, figsize=(6.4 * panels, 4.0), dpi=100, squeeze=False)
    draw(list(ax[0]) if panels > 1 else ax[0][0])
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_curves(
    path: Path, curves: Mapping[str, Mapping[int, float]], *, title: str, ylabel: str
) -> None:
    """One line per label: value by training step."""

    def draw(ax: Any) -> None:
        for label, points in curves.items():
            steps = sorted(points)
            ax.plot(steps, [points[s] for s in steps], label=label)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.legend()
        ax.grid(alpha=0.3)

    _plot(path, draw)


def plot_overlap(path: Path, overlap: Mapping[int, Sequence[float]]) -> None:
    """Per layer, the share of the top-W neurons that math and general calibration agree on, one
    group of bars per layer and one bar per width W."""

    def draw(ax: Any) -> None:
        widths = sorted(overlap, reverse=True)
        step = 0.8 / max(len(widths), 1)
        for j, w in enumerate(widths):
            xs = [i - 0.4 + step * (j + 0.5) for i in range(len(overlap[w]))]
            ax.bar(xs, overlap[w], width=step, label=f"top {w}")
        ax.set(
            title="math expert neurons kept by both math and general calibration",
            xlabel="layer",
            ylabel="overlap of the top-W sets",
            ylim=(0, 1),
        )
        ax.set_xticks(range(len(next(iter(overlap.values()), []))))
        ax.legend()

    _plot(path, draw)


def plot_widths(path: Path, widths: Mapping[str, Sequence[int]]) -> None:
    """Domain-expert width per layer for each labelled model."""

    def draw(ax: Any) -> None:
        for label, per_layer in widths.items():
            ax.plot(range(len(per_layer)), per_layer, marker="o", label=label)
        ax.set(title="math expert width per layer", xlabel="layer", ylabel="width")
        ax.set_xticks(range(max(len(v) for v in widths.values())))
        ax.legend()
        ax.grid(alpha=0.3)

    _plot(path, draw)


def plot_routing(path: Path, stats: Mapping[str, RoutingStatistics]) -> None:
    """One panel per model: for each layer and domain, a group of bars, the share of the
    domain's tokens routed to each expert."""

    def draw_one(ax: Any, title: str, st: RoutingStatistics) -> None:
        groups = [(i, d) for i in range(st.n_layers) for d in st.domains]
        step = 0.8 / st.num_experts
        for e, name in enumerate(st.expert_names()):
            xs = [g - 0.4 + step * (e + 0.5) for g in range(len(groups))]
            ax.bar(xs, [st.share[d][i][e] for i, d in groups], width=step, label=name)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"L{i} {d}" for i, d in groups], rotation=45, ha="right")
        ax.set(title=title, ylabel="share of the domain's tokens", ylim=(0, 1.25))
        ax.legend(ncol=st.num_experts, loc="upper center", fontsize="small")

    def draw(axes: Any) -> None:
        for ax, (title, st) in zip(axes if len(stats) > 1 else [axes], stats.items()):
            draw_one(ax, title, st)

    _plot(path, draw, panels=max(len(stats), 1))
