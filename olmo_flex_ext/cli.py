"""The ``olmo-flex`` command line.

Each command group lives next to the code it drives and contributes ``register(subparsers)``; a
command's handler is ``args.run(args) -> int``. Heavy imports happen inside handlers so that
``olmo-flex --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES: List[str] = [
    "olmo_flex_ext.commands",
    "olmo_flex_ext.hf.commands",
    "olmo_flex_ext.stock.commands",
    "olmo_flex_ext.prune.commands",
    "olmo_flex_ext.compose.commands",
    "olmo_flex_ext.distill.commands",
    "olmo_flex_ext.demo",
    "olmo_flex_ext.data.commands",
    "olmo_flex_ext.eval.commands",
]


# Commands whose output is a training log: they set up logging themselves (the launcher quiets
# libraries only while it loads the config; the demo's stages log to files).
LOGGING_COMMANDS = {"train", "demo"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olmo-flex",
        description="Prune, distill and compose FlexOlmo experts of any width (OLMo-core).",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show library warnings and logs (given anywhere on the command line; by default a "
        "command prints only its own output, and a failing one a single error: line)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import quiet_libraries, user_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    verbose = "--verbose" in argv[:end]
    parser = build_parser()
    args, extra = parser.parse_known_args(
        [a for i, a in enumerate(argv) if a != "--verbose" or i >= end]
    )
    if extra and not getattr(args, "takes_overrides", False):  # dotted overrides (plan)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    args.verbose = verbose
    quiet = not verbose and args.command not in LOGGING_COMMANDS
    with user_errors(verbose), quiet_libraries(quiet):
        return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
