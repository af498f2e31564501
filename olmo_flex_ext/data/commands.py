"""``olmo-flex tokenize``: JSONL documents -> OLMo-core token files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize",
        help="tokenize JSONL (.jsonl, .jsonl.gz, .jsonl.zst) into OLMo-core token files",
        description=(
            "Encode the text field of every JSONL document with a Hugging Face tokenizer, add EOS "
            "after each document, and write one token file per input (uint16 if the vocabulary "
            "fits, else uint32) plus OUT/meta.json. Parallel over chunks of documents; an "
            "interrupted run started again skips the files already done."
        ),
    )
    p.add_argument("inputs", nargs="+", help="JSONL files or globs (quote globs)")
    p.add_argument("--tokenizer", required=True, help="HF tokenizer directory (tokenizer.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--field", default="text", help="JSON field holding the text (default: text)")
    p.add_argument("--workers", type=int, default=1, help="encoder processes (default 1)")
    p.add_argument(
        "--dtype", choices=["uint16", "uint32"], help="default: from the vocabulary size"
    )
    p.add_argument("--eos-id", type=int, help="EOS id (default: the tokenizer config's eos_token)")
    p.add_argument(
        "--bos", action="store_true", help="also put the tokenizer's BOS before each document"
    )
    p.add_argument("--overwrite", action="store_true", help="redo an output directory that is done")
    p.set_defaults(run=_tokenize)


def _tokenize(args) -> int:
    from ..cli_args import claimed_output
    from .tokenize import expand_jsonl_inputs, tokenize_jsonl

    if args.workers < 1:
        from ..errors import UserError

        raise UserError(f"--workers must be at least 1, got {args.workers}")
    inputs = expand_jsonl_inputs(args.inputs) + [args.tokenizer]
    with claimed_output(args, args.out, inputs=inputs, resume=True):
        meta = tokenize_jsonl(
            args.inputs,
            args.tokenizer,
            args.out,
            field=args.field,
            workers=args.workers,
            dtype=args.dtype,
            eos_id=args.eos_id,
            bos=args.bos,
            overwrite=args.overwrite,
        )
    print(
        f"{meta['num_documents']:,} documents, {meta['num_tokens']:,} tokens ({meta['dtype']}) "
        f"in {len(meta['files'])} files under {args.out}"
    )
    return 0
