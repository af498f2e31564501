"""``olmo-flex logprobs``: write a teacher's top-k store (one CPU, or many ranks under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import (
    add_checkpoint,
    add_device,
    add_overwrite,
    add_token_data,
    add_verify,
    add_weight_dtype,
    checkpoint_input,
    claimed_output,
    require_positive,
    token_inputs,
)
from ..data.tokenizers import TOKENIZER_NAMES

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "logprobs",
        help="write a teacher's top-k next-token log-probs for token files (a top-k store)",
        description=(
            "Run TEACHER over token files in windows of --seq-len tokens (the windows of "
            "OLMo-core's FSL dataset) and store its top-k next-token log-probs for every position. "
            "Resumes after interruption; under torchrun the ranks share the work."
        ),
    )
    add_checkpoint(p, "teacher", "TEACHER", help="teacher")
    add_token_data(p, with_num_seqs=False, batch_size=4, batch_help="windows per teacher forward")
    p.add_argument("--top-k", type=int, default=128, help="tokens kept per position (default 128)")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument(
        "--tokenizer",
        metavar="NAME|DIR",
        help=f"the data's tokenizer: one of {', '.join(TOKENIZER_NAMES)} or a Hugging Face "
        "tokenizer directory, as olmo-flex tokenize takes it (default: the known one with the "
        "teacher's vocabulary)",
    )
    p.add_argument(
        "--chunk-windows",
        type=int,
        default=None,
        help="windows per chunk file, the unit of resumption (default ~256k tokens)",
    )
    add_device(p)
    add_weight_dtype(
        p,
        "--teacher-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="teacher weights (bfloat16 halves GPU memory; log-softmax stays float32)",
    )
    add_overwrite(p, "an existing store (and an unfinished one made with other settings)")
    add_verify(p)
    p.set_defaults(run=_logprobs)


def _logprobs(args) -> int:
    import os

    from rich.console import Console

    from ..checkpoint import read_model_config
    from ..cli_args import command_device, torch_dtype
    from ..data.tokenizers import tokenizer_for_vocab, tokenizer_from_arg
    from ..train.experiment import process_group
    from .generate import generate_store

    require_positive(args, "seq_len", "top_k", "batch_size", "chunk_windows")
    inputs = checkpoint_input(args.teacher, args.verify) + token_inputs(args.data)
    vocab = read_model_config(args.teacher).vocab_size
    tokenizer = tokenizer_from_arg(args.tokenizer) if args.tokenizer else tokenizer_for_vocab(vocab)
    if args.tokenizer and tokenizer.identifier == str(Path(args.tokenizer).resolve()):
        inputs.append(args.tokenizer)
    device = command_device(args.device)
    with process_group(), claimed_output(args, args.out, inputs=inputs):
        store = generate_store(
            args.teacher,
            args.data,
            seq_len=args.seq_len,
            k=args.top_k,
            out=args.out,
            tokenizer=tokenizer,
            dtype=args.dtype,
            batch_size=args.batch_size,
            windows_per_chunk=args.chunk_windows,
            device=device,
            teacher_dtype=torch_dtype(args.teacher_dtype),
            overwrite=args.overwrite,
        )
    if store is not None and int(os.environ.get("RANK", "0")) == 0:
        Console().print(
            f"wrote {store.path}: {store.num_tokens:,d} tokens x top-{store.k}, "
            f"{store.bytes_per_token} bytes/token"
        )
    return 0
