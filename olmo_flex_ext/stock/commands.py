"""Stock OLMo-core checkpoint commands: ``import-olmo-core`` and ``export-olmo-core``."""

from __future__ import annotations

import argparse

from ..cli_args import (
    add_checkpoint,
    add_overwrite,
    add_verify,
    checkpoint_input,
    claimed_output,
    report_written,
)

LAYOUT_CHOICES = ["default", "dropless"]  # olmo_core.nn.moe.MoEType, without importing torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-olmo-core",
        help="stock OLMo-core MoE checkpoint -> ours (a trainer checkpoint keeps its optimizer "
        "state and continues)",
        description="Store a checkpoint of OLMo-core's own MoE model (MoEConfig, default or "
        "dropless type) in the variable-width layout. Every command already reads stock "
        "checkpoints as they are; this is for continuing a stock run: a trainer checkpoint "
        "(stepN/, or a run folder's latest) becomes OUT/stepN/ with its optimizer moments "
        "converted like the weights and its step, data position and RNG states kept, so "
        "training with --trainer.save_folder=OUT resumes it.",
    )
    add_checkpoint(p, "src", "SRC", help="stock OLMo-core MoE checkpoint")
    p.add_argument(
        "out", metavar="OUT", help="model-only checkpoint, or run folder for a trainer one"
    )
    add_overwrite(p, "OUT")
    add_verify(p)
    p.set_defaults(run=_import)

    p = sub.add_parser(
        "export-olmo-core",
        help="checkpoint -> stock OLMo-core MoE checkpoint (default or dropless layout)",
        description="Write a checkpoint (ours, or stock OLMo-core) as a checkpoint that stock "
        "OLMo-core loads into its own MoEConfig model of the chosen type. Experts narrower "
        "than the widest of their layer are zero-padded with --pad (the same function; the "
        "widths are recorded, so reading it back restores them) and refused without. A "
        "trainer checkpoint becomes OUT/stepN/ with its optimizer state converted too.",
    )
    add_checkpoint(p, "src", "SRC")
    p.add_argument(
        "out", metavar="OUT", help="model-only checkpoint, or run folder for a trainer one"
    )
    p.add_argument(
        "--layout",
        choices=LAYOUT_CHOICES,
        required=True,
        help="MoE type to write: default (OLMo-core's FlexOlmo/OLMoE configs; w1/w3 stored "
        "(experts x d_model, hidden)) or dropless (all (experts x hidden, d_model))",
    )
    p.add_argument(
        "--pad",
        action="store_true",
        help="zero-pad experts narrower than their layer's widest (otherwise refused)",
    )
    add_overwrite(p, "OUT")
    add_verify(p)
    p.set_defaults(run=_export)


def _import(args) -> int:
    from . import import_olmo_core

    with claimed_output(args, args.out, inputs=checkpoint_input(args.src, args.verify)):
        import_olmo_core(args.src, args.out, overwrite=args.overwrite)
    return report_written("imported", args.out)


def _export(args) -> int:
    from . import export_olmo_core

    with claimed_output(args, args.out, inputs=checkpoint_input(args.src, args.verify)):
        export_olmo_core(
            args.src, args.out, layout=args.layout, pad=args.pad, overwrite=args.overwrite
        )
    return report_written("exported", args.out)
