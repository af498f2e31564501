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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olmo-flex",
        description="Prune, distill and compose FlexOlmo experts of any width (OLMo-core).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import user_errors

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    with user_errors():
        return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
