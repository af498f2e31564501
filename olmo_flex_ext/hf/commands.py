"""Checkpoint commands: ``import-hf``, ``export-hf``, ``upcycle`` and ``info``."""

from __future__ import annotations

import argparse

from ..cli_args import (
    add_checkpoint,
    add_overwrite,
    add_verify,
    add_weight_dtype,
    checkpoint_input,
    claimed_output,
    int_list,
    report_written,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-hf",
        help="transformers FlexOlmo directory -> model-only checkpoint",
        description="Convert a transformers FlexOlmo directory (config.json + safetensors, single or "
        "sharded) into a model-only checkpoint, streaming one tensor at a time.",
    )
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("out", metavar="OUT")
    add_weight_dtype(p, help="convert the weights (default: keep their dtype)")
    p.add_argument(
        "--keep-padding",
        action="store_true",
        help="keep zero-padded experts at the full width instead of restoring recorded widths",
    )
    add_overwrite(p, "OUT")
    p.set_defaults(run=_import)

    p = sub.add_parser(
        "export-hf",
        help="checkpoint -> transformers FlexOlmo directory",
        description="Write a model-only or trainer checkpoint (or a run folder's latest) as a "
        "directory that transformers loads with AutoModelForCausalLM.from_pretrained. Narrower "
        "experts are zero-padded to the widest, which computes the same function.",
    )
    add_checkpoint(p, "src", "SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--tokenizer", metavar="DIR", help="copy the tokenizer files from DIR")
    add_weight_dtype(p, help="convert the weights (default: keep their dtype)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    add_overwrite(p, "OUT")
    add_verify(p)
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "upcycle",
        help="dense OLMo-2-style model -> N experts that are copies of its MLP",
        description="Grow a dense OLMo-2-style model (OLMo-core checkpoint or transformers Olmo2 "
        "directory) into a variable-width MoE whose experts start as copies of the dense MLP.",
    )
    p.add_argument("dense", metavar="DENSE")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--experts", type=int, required=True, help="number of experts")
    p.add_argument(
        "--widths",
        type=int_list,
        help="one width per expert, e.g. 256,128 (default: the dense width; narrower experts "
        "keep the first neurons)",
    )
    p.add_argument("--top-k", type=int, help="experts per token (default: all)")
    p.add_argument(
        "--router-from",
        metavar="PATH",
        help="router rows: safetensors file (key 'router' (N, d_model) or layer{i}), or a MoE "
        "checkpoint / FlexOlmo directory to copy from (default: small random values)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random router rows")
    add_overwrite(p, "OUT")
    add_verify(p)
    p.set_defaults(run=_upcycle)

    p = sub.add_parser(
        "info",
        help="architecture, expert widths and parameter counts of a checkpoint (or a top-k store)",
        description="Describe a model-only checkpoint, trainer stepN/ directory, run folder, "
        "transformers FlexOlmo/Olmo2 directory or top-k store; --verify checks every file.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check every weight file: against the SHA-256 recorded when it was written, or "
        "(trainer checkpoints, transformers directories) by reading every tensor; a store's "
        "chunks against their SHA-256 and every row",
    )
    p.set_defaults(run=_info)


def _import(args) -> int:
    from . import import_hf

    with claimed_output(args, args.out, inputs=[args.hf_dir]):
        import_hf(
            args.hf_dir,
            args.out,
            overwrite=args.overwrite,
            dtype=args.dtype,
            keep_padding=args.keep_padding,
        )
    return report_written("imported", args.out)


def _export(args) -> int:
    from . import export_hf, parse_size

    inputs = checkpoint_input(args.src, args.verify) + ([args.tokenizer] if args.tokenizer else [])
    with claimed_output(args, args.out, inputs=inputs):
        export_hf(
            args.src,
            args.out,
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            max_shard_bytes=parse_size(args.max_shard_size),
            dtype=args.dtype,
        )
    return report_written("exported", args.out)


def _upcycle(args) -> int:
    from . import upcycle
    from .files import is_hf_dir

    inputs = [args.dense] if is_hf_dir(args.dense) else checkpoint_input(args.dense, args.verify)
    inputs += [args.router_from] if args.router_from else []
    with claimed_output(args, args.out, inputs=inputs):
        upcycle(
            args.dense,
            args.out,
            num_experts=args.experts,
            expert_widths=args.widths,
            router_from=args.router_from,
            seed=args.seed,
            overwrite=args.overwrite,
            top_k=args.top_k,
        )
    return report_written("upcycled", args.out)


def _info(args) -> int:
    from ..distill.topk_store import TopKStore, is_store
    from .summary import summarize

    if is_store(args.path):
        store = TopKStore(args.path)
        print(store.describe() + (f"\nverified: {store.verify()}" if args.verify else ""))
        return 0
    print(summarize(args.path, verify=args.verify))
    return 0
