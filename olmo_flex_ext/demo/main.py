"""``run_demo``: run or continue a demo directory and print its tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from rich.console import Console

from ..atomic import write_atomic
from ..errors import UserError
from .config import demo_config, identity
from .pipeline import Demo
from .runner import worker_pool

__all__ = ["run_demo", "print_tables"]

console = Console()


def run_demo(
    out: str,
    *,
    quick: bool = False,
    wandb: bool = True,
    threads: int = 1,
    jobs: int = 2,
    seed: int = 0,
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Run (or continue) the demo in ``out``; returns the results and composition rows.

    ``threads``: torch CPU threads per process. One is the default: the models are so small that
    a second thread mostly adds synchronisation, and on a busy machine it was measured 10x slower.
    ``jobs``: independent stages (the two experts, the distillation runs, evaluations) that run
    side by side in worker processes; results do not depend on it."""
    import torch

    torch.set_num_threads(threads)
    config = demo_config(quick, wandb=wandb, seed=seed)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings = root / "demo.json"
    if settings.exists():
        if json.loads(settings.read_text()) != identity(config):
            raise UserError(
                f"{root} holds a demo made with other settings (--quick or --seed); "
                "use another --out directory or delete this one"
            )
    else:
        write_atomic(settings, json.dumps(identity(config), indent=2))
    start = time.perf_counter()
    pool = worker_pool(jobs, threads)
    try:
        rows, composition = Demo(root, config, pool).run()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print_tables(rows, composition)
    console.print(
        f"wall time of this invocation {time.perf_counter() - start:.0f} s; results in "
        f"{root / 'results.json'}, report in {root / 'report.md'}"
    )
    return rows, composition


def print_tables(rows: List[Dict[str, Any]], composition: List[Dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="results")
    for col in ("name", "kind", "expert widths", "params", "expert params", "math acc",
                "math loss", "general loss"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], r["kind"], _widths(r["expert_widths"]), f"{r['total_params']:,}",
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


def _widths(w: Any) -> str:
    if w and isinstance(w[0], list):
        return "per layer " + " ".join("+".join(map(str, x)) for x in w)
    return "+".join(map(str, w))
