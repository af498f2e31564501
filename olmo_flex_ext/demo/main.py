"""``run_demo``: run or continue a demo directory and print its tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..atomic import write_atomic
from ..errors import UserError
from .config import demo_config, identity
from .display import StageDisplay
from .pipeline import Demo
from .report import print_tables
from .runner import worker_pool
from .targets import composition_targets

__all__ = ["run_demo"]


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
    display = StageDisplay()
    preset = "quick demo" if quick else "demo"
    display.print(
        f"olmo-flex {preset} (seed {seed}, {jobs} job{'s' if jobs > 1 else ''}) in {root}: one line "
        f"per stage; each stage's full output in {root / 'logs'}/<stage>.log"
    )
    pool = worker_pool(jobs, threads)
    try:
        with display:
            rows, composition = Demo(root, config, pool, display).run()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    targets = composition_targets(composition, config.composition_tags())
    print_tables(rows, composition, display.console, targets)
    display.print(
        f"wall time of this invocation {time.perf_counter() - start:.0f} s; results in "
        f"{root / 'results.json'}, report in {root / 'report.md'}"
    )
    return rows, composition
