"""General commands: ``train`` (same as the launcher), ``plan`` (memory and time of a train
config, on this CPU) and ``models`` (named model configs)."""

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

    p = sub.add_parser(
        "plan",
        help="memory per GPU and run time of a train config, simulated on this CPU",
        description=PLAN_DESCRIPTION,
        usage="olmo-flex plan CONFIG.py [options] [--dotted.override=VALUE ...]",
    )
    add_plan_args(p)
    p.set_defaults(run=_plan, takes_overrides=True)

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


PLAN_DESCRIPTION = (
    "Simulate whole training steps of a train config on fake tensors with a fake process group of "
    "N ranks (nothing is allocated) and print the peak memory per GPU by category and phase, "
    "whether it fits, the largest micro-batch that fits, tokens per step, FLOPs per token and the "
    "time per step and per run at a given MFU. Dotted overrides (--a.b=value) change the config "
    "as for training."
)


def add_plan_args(p: argparse.ArgumentParser) -> None:
    gpus = ["a100", "b200", "h100", "h200"]  # train.plan.GPUS, without importing torch here
    p.add_argument("config", help="train config file, e.g. train_configs/flex_math_5504.py")
    p.add_argument("--world-size", type=int, default=8, help="number of GPUs (default 8)")
    p.add_argument("--gpu", default="h100", choices=gpus, help="GPU kind (default h100)")
    p.add_argument(
        "--gpu-memory", default=None, help="memory per GPU, e.g. 80GB (default: the GPU's)"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    p.add_argument("--headroom", type=float, default=0.1,
                   help="share of GPU memory kept free for CUDA context, NCCL, fragmentation (0.1)")  # fmt: skip
    p.add_argument("--routing", choices=["balanced", "worst"], default="balanced",
                   help="tokens per expert assumed when top_k < experts (default balanced)")  # fmt: skip
    p.add_argument("--model", help="model name (olmo-flex models) for a config that reads its "
                   "model from a checkpoint that is not on this machine")  # fmt: skip
    p.add_argument("--teacher-model", help="model name of the teacher (default: its checkpoint's "
                   "config, else the student at the unpruned widths)")  # fmt: skip
    p.add_argument("--no-search", action="store_true", help="skip the largest micro-batch search")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _plan(args) -> int:
    from .errors import UserError
    from .train.plan import parse_bytes, plan_run

    bad = [a for a in args.overrides if not (a.startswith("--") and "." in a.split("=")[0])]
    if bad:
        raise UserError(f"unknown argument {bad[0]!r}; overrides look like --trainer.save_folder=X")
    plan = plan_run(
        args.config,
        args.overrides,
        world_size=args.world_size,
        gpu=args.gpu,
        gpu_memory=parse_bytes(args.gpu_memory) if args.gpu_memory else None,
        mfu=args.mfu,
        headroom=args.headroom,
        routing=args.routing,
        model=args.model,
        teacher_model=args.teacher_model,
        search=not args.no_search,
    )
    print(plan.to_json() if args.json else plan.render())
    return 0
