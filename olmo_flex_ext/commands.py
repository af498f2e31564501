"""General commands: ``train`` (same as the launcher) and ``models`` (named model configs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run a train config (same as python -m olmo_flex_ext.launch)",
        description="Run a train config; use torchrun -m olmo_flex_ext.launch for several ranks.",
        add_help=False,
    )
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(run=lambda a: _launch(a.argv + (["--verbose"] if a.verbose else [])))

    p = sub.add_parser("models", help="list named model configs and their parameter counts")
    p.add_argument("name", nargs="?", help="show one config in full, e.g. flex-2x7b-5504")
    p.set_defaults(run=_models)


def _launch(argv) -> int:
    from .launch import main

    return main(argv)


def _models(args) -> int:
    from rich.console import Console

    from .models import count_text, get_model_config, model_names

    console = Console()
    if args.name:
        config = get_model_config(args.name)
        console.print(config)
        console.print(f"total params: {config.num_params:,d}")
        return 0
    for name in model_names():
        if "<" in name:
            console.print(name, markup=False)
            continue
        n = get_model_config(name).num_params
        console.print(f"{name:<26} {count_text(n):>8} params ({n:,d})", markup=False)
    return 0
