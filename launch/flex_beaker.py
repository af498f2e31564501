"""Launch a train config on Beaker with OLMo-core's launcher (``olmo_core.launch.beaker``).

    python launch/flex_beaker.py train_configs/flex_math_5504.py --nodes 2 --gpus 8 \\
        --workspace ai2/olmo-flex --budget ai2/oe-base --cluster ai2/jupiter \\
        --weka oe-training-default --save-folder /weka/oe-training-default/$USER/flex_math_5504 \\
        [--dry-run] [--dataset.paths='[/weka/.../math/*.npy]' ...]

Every node runs ``torchrun --nnodes=N --nproc-per-node=G ... python -m olmo_flex_ext.launch
CONFIG --trainer.save_folder=SAVE [overrides]`` (Beaker Gantry adds the torchrun part). The train
config is loaded and checked here first, so a bad config fails before anything is submitted.
``--dry-run`` prints the Beaker launch config, the per-node command and the model summary without
contacting Beaker. Needs the beaker extra: ``pip install -e '.[beaker]'``. Beaker retries a
preempted job and the run resumes from the latest checkpoint in the shared save folder.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console

from olmo_flex_ext.errors import UserError, user_errors


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(
        prog="python launch/flex_beaker.py",
        description="Launch a train config on Beaker (olmo_core.launch.beaker). Arguments "
        "of the form --a.b=value are passed to the train config as overrides.",
    )
    p.add_argument("config", help="train config file, e.g. train_configs/flex_math_5504.py")
    p.add_argument("--save-folder", required=True, help="run folder on shared storage (resume)")
    p.add_argument("--name", help="experiment name (default: the config file's name)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--workspace")
    p.add_argument("--budget")
    p.add_argument("--cluster", action="append", help="allowed cluster (repeatable)")
    p.add_argument("--priority", default="normal", choices=["low", "normal", "high", "urgent"])
    p.add_argument("--no-preemptible", action="store_true", help="do not allow preemption")
    p.add_argument("--retries", type=int, default=3, help="Beaker retries (each one resumes)")
    p.add_argument("--weka", action="append", default=[], help="Weka bucket mounted at /weka/NAME")
    p.add_argument("--image", help="Beaker image (default: OLMo-core's stable image)")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE (repeatable)")
    p.add_argument(
        "--wandb-secret",
        default="WANDB_API_KEY",
        help="Beaker secret holding the W&B API key (skipped with a warning if missing)",
    )
    p.add_argument("--allow-dirty", action="store_true", help="launch with uncommitted changes")
    p.add_argument("--no-follow", action="store_true", help="submit and return")
    p.add_argument("--dry-run", action="store_true", help="print what would run, submit nothing")
    return p.parse_known_args(argv)


def git_state(dry_run: bool):
    """Where Beaker clones the code from. A dry run works without a pushed GitHub remote."""
    from gantry.api import GitRepoState

    try:
        return GitRepoState.from_env()
    except Exception as e:  # gantry raises several types; all mean "not launchable from here"
        if not dry_run:
            raise UserError(
                f"cannot launch from this checkout ({e}); Beaker clones the code from GitHub, so "
                "run from the repository root with the commit pushed to its GitHub remote"
            ) from None
        ref = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        Console(stderr=True).print(f"[yellow]warning:[/] not launchable as is: {e}")
        return GitRepoState(repo="(local)", repo_url="", ref=ref.stdout.strip() or "unknown")


def node_command(args, argv: List[str]) -> List[str]:
    """What each node runs (Gantry's torchrun wrapper followed by the launcher)."""
    rdzv = (
        ["--nnodes=$BEAKER_REPLICA_COUNT", "--node-rank=$BEAKER_REPLICA_RANK"]
        + [
            "--rdzv-backend=static",
            "--rdzv-endpoint=$BEAKER_LEADER_REPLICA_HOSTNAME:$GANTRY_RDZV_PORT",
        ]
        if args.nodes > 1
        else []
    )
    return ["torchrun", *rdzv, f"--nproc-per-node={args.gpus}", "--no-python", *argv]


def main(argv: Optional[List[str]] = None) -> int:
    args, overrides = parse_args(argv)
    console = Console()
    with user_errors():
        from olmo_core.launch.beaker import (
            BeakerEnvSecret,
            BeakerEnvVar,
            BeakerLaunchConfig,
            BeakerWekaBucket,
            OLMoCoreBeakerImage,
        )

        from olmo_flex_ext.launch import describe
        from olmo_flex_ext.train.experiment import check_parallelism, load_experiment

        if not args.save_folder.startswith(("/", "gs://", "s3://", "weka://", "r2://")):
            raise UserError(
                f"--save-folder {args.save_folder} must be an absolute path on storage every node "
                "and every retry sees (e.g. /weka/<bucket>/...), or the run cannot resume"
            )
        config_path = Path(args.config)
        run_overrides = [f"--trainer.save_folder={args.save_folder}", *overrides]
        experiment = load_experiment(str(config_path), run_overrides)  # fail here, not on Beaker
        check_parallelism(experiment, ranks=args.nodes * max(args.gpus, 1))
        cmd = ["python", "-m", "olmo_flex_ext.launch", args.config, *run_overrides]
        env = [BeakerEnvVar(name=n, value=v) for n, _, v in (e.partition("=") for e in args.env)]
        launch_config = BeakerLaunchConfig(
            name=args.name or config_path.stem.replace("_", "-"),
            cmd=cmd,
            torchrun=args.gpus > 0,
            budget=args.budget,
            workspace=args.workspace,
            beaker_image=args.image or OLMoCoreBeakerImage.stable,
            num_nodes=args.nodes,
            num_gpus=args.gpus,
            clusters=args.cluster or ["ai2/jupiter"],
            shared_filesystem=bool(args.weka),
            priority=args.priority,
            preemptible=not args.no_preemptible,
            retries=args.retries,
            env_vars=env,
            env_secrets=[BeakerEnvSecret("WANDB_API_KEY", args.wandb_secret, required=False)],
            weka_buckets=[BeakerWekaBucket(b, f"/weka/{b}") for b in args.weka],
            allow_dirty=args.allow_dirty,
            git=git_state(args.dry_run),
            follow=not args.no_follow,
        )
        if args.dry_run:
            console.print(launch_config)
            shown = " ".join(a if "$" in a else shlex.quote(a) for a in node_command(args, cmd))
            console.print(f"each node runs: {shown}", soft_wrap=True, markup=False)
            console.print(describe(experiment))
            console.print("dry run: nothing submitted")
            return 0
        launch_config.launch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
