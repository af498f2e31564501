"""The end-to-end demo on CPU: ``olmo-flex demo --out DIR [--quick]``.

Every stage is a call into the library, and every training run is an OLMo-core experiment built
with the same recipe functions, pruning callback and distillation train module as the 7B train
configs (:mod:`.runs`); there is no separate toy path. Stages are resumable (:mod:`.runner`); the
order is in :mod:`.pipeline`, the composition step in :mod:`.composition`.

Importing this package stays light (the CLI registers it); the pieces load on first use.
"""

from __future__ import annotations

import argparse
import sys

from ..lazy import lazy_exports

__all__ = [
    "DemoConfig",
    "RunSettings",
    "demo_config",
    "Demo",
    "StageRunner",
    "run_demo",
    "register",
]

_EXPORTS = {
    "DemoConfig": "config",
    "RunSettings": "config",
    "demo_config": "config",
    "identity": "config",
    "Demo": "pipeline",
    "StageRunner": "runner",
    "run_demo": "main",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the tiny end-to-end pipeline on CPU (resumable)",
        description="Train a public model and a math expert, prune and distill the expert at "
        "several widths, compose it with a code expert, evaluate everything; write "
        "DIR/results.json, DIR/composition.json and DIR/report.md. Running the same command "
        "again continues where it stopped.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="the shortened variant CI runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and every run (default 0)")
    p.add_argument("--no-wandb", action="store_true", help="do not log training runs to W&B")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per process (default 1)"
    )
    p.add_argument(
        "--jobs", type=int, default=2,
        help="stages run side by side in worker processes (default 2; 1 runs all in this process)",
    )  # fmt: skip
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from .main import run_demo

    for name in ("threads", "jobs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    from ..cli_args import claimed_output
    from .runner import StageFailed

    try:
        with claimed_output(args, args.out, resume=True):  # one demo at a time in a folder
            run_demo(
                args.out, quick=args.quick, wandb=not args.no_wandb, threads=args.threads,
                jobs=args.jobs, seed=args.seed,
            )  # fmt: skip
    except StageFailed as e:  # the end of the stage's log is already on the terminal
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
