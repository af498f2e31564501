"""``olmo-flex logprobs``: write a teacher's top-k store (one CPU, or many ranks under torchrun)."""

from __future__ import annotations

import argparse
from typing import List

__all__ = ["register", "named_tokenizer", "TOKENIZER_NAMES"]

TOKENIZER_NAMES: List[str] = ["dolma2", "dolma2_sigdig", "gpt_neox_olmo_dolma_v1_5", "gpt2", "tiny"]


def named_tokenizer(name: str):
    """An OLMo-core ``TokenizerConfig`` by name (``tiny`` = the synthetic tiny data's)."""
    from olmo_core.data import TokenizerConfig

    from ..errors import UserError

    if name == "tiny":
        from ..recipes import TINY_TOKENIZER

        return TINY_TOKENIZER
    if name not in TOKENIZER_NAMES:
        raise UserError(f"unknown tokenizer {name!r}; use one of {', '.join(TOKENIZER_NAMES)}")
    return getattr(TokenizerConfig, name)()


def tokenizer_for_vocab(vocab_size: int):
    """The one known tokenizer whose padded vocabulary is ``vocab_size``."""
    from ..errors import UserError

    matches = [n for n in TOKENIZER_NAMES if named_tokenizer(n).padded_vocab_size() == vocab_size]
    if len(matches) != 1:
        raise UserError(
            f"cannot tell the tokenizer of a {vocab_size}-token vocabulary "
            f"({'candidates: ' + ', '.join(matches) if matches else 'no known tokenizer'}); "
            f"pass --tokenizer (one of {', '.join(TOKENIZER_NAMES)})"
        )
    return named_tokenizer(matches[0])


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
    p.add_argument("teacher", help="teacher checkpoint (model-only, trainer stepN/, or run folder)")
    p.add_argument("--data", required=True, help="token files (glob; comma-separate several)")
    p.add_argument("--seq-len", type=int, required=True, help="window length (the training one)")
    p.add_argument("--top-k", type=int, default=128, help="tokens kept per position (128)")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--dtype", choices=["uint16", "uint32"], help="token file dtype (default: "
                   "uint16 if the vocabulary fits, else uint32)")
    p.add_argument("--tokenizer", choices=TOKENIZER_NAMES,
                   help="the data's tokenizer (default: the known one with the teacher's vocabulary)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per teacher forward (4)")
    p.add_argument("--chunk-windows", type=int, default=None,
                   help="windows per chunk file, the unit of resumption (default ~256k tokens)")
    p.add_argument("--teacher-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="teacher weights (bfloat16 halves GPU memory; log-softmax stays float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(run=_logprobs)


def _logprobs(args) -> int:
    import os

    import torch
    import torch.distributed as dist
    from rich.console import Console

    from ..checkpoint import read_model_config
    from ..experiment import distributed_backend
    from .generate import generate_store

    for name in ("seq_len", "top_k", "batch_size"):
        if getattr(args, name) <= 0:
            from ..errors import UserError

            raise UserError(f"--{name.replace('_', '-')} must be positive")
    vocab = read_model_config(args.teacher).vocab_size
    tokenizer = named_tokenizer(args.tokenizer) if args.tokenizer else tokenizer_for_vocab(vocab)
    backend = distributed_backend()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if backend is not None and not dist.is_initialized():
        dist.init_process_group(backend=backend)
    try:
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
            teacher_dtype=getattr(torch, args.teacher_dtype),
            overwrite=args.overwrite,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if store is not None and int(os.environ.get("RANK", "0")) == 0:
        Console().print(
            f"wrote {store.path}: {store.num_tokens:,d} tokens x top-{store.k}, "
            f"{store.bytes_per_token} bytes/token"
        )
    return 0
