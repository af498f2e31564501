"""Benchmarks that print ratios measured within one run.

Timings on a shared machine are noisy, so every benchmark times its variants interleaved (each
repeat runs every variant once, in a rotating order) after a warmup, and reports the median of
the repeats and its ratio to a baseline variant measured in the same run. ``python -m bench``
runs every benchmark; ``python -m bench.<name>`` runs one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

__all__ = [
    "Timing",
    "time_interleaved",
    "report",
    "add_timing_args",
    "BENCHMARKS",
    "MEMORY_BENCHMARKS",
    "CLOCKS",
]

BENCHMARKS: List[str] = [
    "bench.moe",
    "bench.expert_training",
    "bench.routing",
    "bench.importance",
    "bench.distill",
    "bench.checks",
]
"""Ratio benchmarks (modules with a ``main()``), run in this order by ``python -m bench``."""

MEMORY_BENCHMARKS: List[str] = ["bench.hf_import", "bench.prune", "bench.merge_memory"]
"""Peak-memory benchmarks: they write GBs of synthetic checkpoints, so they run only by name
(``python -m bench bench.prune``, or ``python bench/prune.py``)."""


@dataclass
class Timing:
    name: str
    seconds: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time. ``cpu``: CPU time of this process (all its threads), steadier on a
machine shared with other jobs, and the same as wall time for one thread on an idle machine."""


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 7,
    warmup: int = 2,
    clock: str = "wall",
) -> Dict[str, Timing]:
    """Run each variant ``warmup`` times, then ``repeats`` rounds in which every variant runs once
    (the order rotates each round so no variant always runs first). Returns times per variant."""
    now = CLOCKS[clock]
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out = {name: Timing(name, []) for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = now()
            variants[name]()
            out[name].seconds.append(now() - start)
    return out


def add_timing_args(parser) -> None:
    """The options every benchmark takes: repeats, warmup, clock, threads."""
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")


def report(
    title: str,
    timings: Mapping[str, Timing],
    baseline: str,
    goal: Optional[Dict[str, float]] = None,
) -> Dict[str, float]:
    """Print a table of medians and ratios to ``baseline``; return name -> ratio.
    ``goal`` maps variant names to the ratio they should stay under (shown, never asserted)."""
    from rich.console import Console
    from rich.table import Table

    base = timings[baseline].median
    ratios = {name: t.median / base for name, t in timings.items()}
    table = Table(title=f"{title}\nratio = median / median of {baseline!r}", title_justify="left")
    for col in ("variant", "median ms", "min ms", "ratio", "goal"):
        table.add_column(col, justify="left" if col in ("variant", "goal") else "right")
    for name, t in timings.items():
        target = (goal or {}).get(name)
        verdict = (
            ""
            if target is None
            else f"<= {target:.2f} " + ("ok" if ratios[name] <= target else "OVER")
        )
        table.add_row(
            name,
            f"{t.median * 1e3:.1f}",
            f"{min(t.seconds) * 1e3:.1f}",
            f"{ratios[name]:.3f}",
            verdict,
        )
    Console(width=max(100, Console().width)).print(table)
    return ratios
