"""The demo report's plots: PNGs drawn with matplotlib's Agg backend (no display needed), each
written to a temp name and renamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..atomic import atomic_file

__all__ = ["plot_curves", "plot_overlap", "plot_widths"]


def _plot(path: Path, draw: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    draw(ax)
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
