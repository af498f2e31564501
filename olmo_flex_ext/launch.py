"""Run a train config: ``torchrun --nproc-per-node=N -m olmo_flex_ext.launch CONFIG.py [--dry-run]
[--dotted.key=value ...]``.

OLMo-core has no runnable ``olmo_core.launch`` module (its ``launch`` package is for Beaker); this
is that entry point for this project. One process runs without a process group; several ranks use
gloo on CPU and NCCL on CUDA and must set ``train_module.dp_config``. Running the same command again
with the same ``trainer.save_folder`` resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import List, Optional

from rich.console import Console

from .errors import quiet_libraries, user_errors

__all__ = ["main", "describe", "cpu_threads"]


def describe(config) -> str:
    """A short summary of an experiment: parameter counts and expert widths per layer."""
    from .models import describe_model

    return describe_model(config.model)


def cpu_threads() -> None:
    """On CPU, one thread per rank unless ``OMP_NUM_THREADS`` is set (torchrun's default too).

    The tiny CPU models gain nothing from more threads, and on a busy machine several threads per
    process made a 200-step run 6x slower; one process behaves like one torchrun rank.
    """
    import os

    import torch

    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(
        prog="python -m olmo_flex_ext.launch",
        description="Run a train config (a .py file defining build_config()) with OLMo-core.",
    )
    parser.add_argument("config", help="train config file, e.g. train_configs/tiny_flex.py")
    parser.add_argument("--dry-run", action="store_true", help="print the config and exit")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show library warnings while the config loads, and tracebacks",
    )
    return parser.parse_known_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args, overrides = parse_args(argv)
    console = Console()
    with contextlib.ExitStack() as guard:
        with user_errors(verbose=args.verbose), quiet_libraries(not args.verbose):
            from .train.experiment import check_parallelism, load_experiment
            from .train.run_folder import guard_run

            config = load_experiment(args.config, overrides)
            check_parallelism(config)
            if args.dry_run:
                console.print(config)
                console.print(describe(config))
                return 0
            # The run folder's lock and the checkpoints to open, before anything starts.
            guard.enter_context(guard_run(config))

        from olmo_core.train import prepare_training_environment, teardown_training_environment

        from .train.experiment import distributed_backend, train

        cpu_threads()
        prepare_training_environment(backend=distributed_backend())
        try:
            with user_errors(verbose=args.verbose):
                train(config)
        finally:
            teardown_training_environment()
    return 0


if __name__ == "__main__":
    sys.exit(main())
