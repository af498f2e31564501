"""Arguments that several ``olmo-flex`` commands share, defined once so that they are spelled,
explained and checked the same way everywhere.

Only argparse and the standard library at import time: every command module imports this while
``olmo-flex --help`` builds its parser, which must not load torch or OLMo-core.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, List, Optional, Sequence, Union

if TYPE_CHECKING:
    import torch

__all__ = [
    "TOKEN_DTYPES",
    "WEIGHT_DTYPES",
    "add_checkpoint",
    "add_overwrite",
    "add_verify",
    "add_token_data",
    "add_weight_dtype",
    "add_device",
    "int_list",
    "require_positive",
    "torch_dtype",
    "command_device",
    "checkpoint_input",
    "token_inputs",
    "claimed_output",
    "report_written",
]

TOKEN_DTYPES = ["uint16", "uint32"]
WEIGHT_DTYPES = ["float32", "bfloat16", "float16"]

CHECKPOINT_HELP = "model-only checkpoint, trainer stepN/ directory, or run folder (its latest step)"


def add_checkpoint(
    p: argparse.ArgumentParser, dest: str = "checkpoint", metavar: str = "CKPT", help: str = ""
) -> None:
    """A positional checkpoint argument (anything :func:`checkpoint.resolve_checkpoint` takes)."""
    p.add_argument(
        dest, metavar=metavar, help=f"{help}: {CHECKPOINT_HELP}" if help else CHECKPOINT_HELP
    )


def add_overwrite(p: argparse.ArgumentParser, what: str = "the output") -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} if it exists (once the new one is complete; never an input)",
    )


def add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verify",
        action="store_true",
        help="first check every weight file of the input checkpoint(s) against the SHA-256 "
        "recorded when it was written (reads them once; sizes are always checked)",
    )


def add_token_data(
    p: argparse.ArgumentParser,
    *,
    data: bool = True,
    seq_len: Optional[int] = None,
    num_seqs: Optional[int] = None,
    with_num_seqs: bool = True,
    batch_size: Optional[int] = None,
    batch_help: str = "sequences per forward pass",
) -> None:
    """``--data`` (token files; repeat or comma-separate), ``--seq-len``, ``--num-seqs``,
    ``--batch-size`` and ``--dtype`` (token dtype). A ``None`` default makes the option required
    (``--batch-size``: left out)."""
    if data:
        p.add_argument(
            "--data",
            action="append",
            required=True,
            metavar="GLOB",
            help="OLMo-core token files (glob); repeat or comma-separate for several",
        )
    p.add_argument(
        "--seq-len",
        type=int,
        required=seq_len is None,
        default=seq_len,
        help="tokens per sequence" + (f" (default {seq_len})" if seq_len else ""),
    )
    if with_num_seqs:
        p.add_argument(
            "--num-seqs",
            type=int,
            required=num_seqs is None,
            default=num_seqs,
            help="sequences, spread evenly over the files"
            + (f" (default {num_seqs})" if num_seqs else ""),
        )
    if batch_size is not None:
        p.add_argument(
            "--batch-size",
            type=int,
            default=batch_size,
            help=f"{batch_help} (default {batch_size})",
        )
    p.add_argument(
        "--dtype",
        choices=TOKEN_DTYPES,
        help="token dtype of the files (default: uint16 if the vocabulary fits, else uint32)",
    )


def add_weight_dtype(
    p: argparse.ArgumentParser,
    flag: str = "--dtype",
    *,
    choices: Iterable[str] = WEIGHT_DTYPES,
    default: Optional[str] = None,
    help: str = "weight dtype",
) -> None:
    suffix = f" (default {default})" if default else ""
    p.add_argument(flag, choices=list(choices), default=default, help=help + suffix)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where the model runs (default: cuda if available; under torchrun each "
        "rank uses cuda:LOCAL_RANK)",
    )


def int_list(text: str) -> List[int]:
    """argparse type: comma-separated integers (``11008,5504``; ``256x128`` works too)."""
    try:
        values = [int(w) for w in text.replace("x", ",").split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of integers; write them like 11008,5504"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer, e.g. 11008,5504")
    return values


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse (one :class:`~olmo_flex_ext.errors.UserError`) any of ``names`` that is <= 0."""
    from .errors import UserError

    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def torch_dtype(name: Optional[str]) -> Optional["torch.dtype"]:
    """``"bfloat16"`` -> ``torch.bfloat16`` (``None`` stays ``None``)."""
    import torch

    return None if name is None else getattr(torch, name)


def command_device(name: Optional[str] = None) -> "torch.device":
    """The device a command's model runs on: ``name``, else CUDA when available; a CUDA device
    is this rank's (``LOCAL_RANK`` under torchrun) and becomes the current one."""
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cuda":
        return torch.device(name)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


# ---- inputs and outputs ------------------------------------------------------------------------


def checkpoint_input(path: str, verify: bool = False) -> List[Path]:
    """The paths a checkpoint argument stands for (for :func:`claimed_output`'s ``inputs``),
    after checking it is a checkpoint; with ``verify``, its weight files' hashes too."""
    from .checkpoint import checkpoint_inputs, verify_checkpoint

    paths = checkpoint_inputs(path)
    if verify:
        verify_checkpoint(path)
    return paths


def token_inputs(globs: Union[str, Sequence[str]]) -> List[str]:
    """The token files ``--data`` names (checked to exist)."""
    from .data.tokens import expand_paths

    return expand_paths(globs)


@contextlib.contextmanager
def claimed_output(
    args: argparse.Namespace,
    out: Union[str, Path],
    *,
    inputs: Iterable[Union[str, Path]] = (),
    kind: str = "dir",
    resume: bool = False,
) -> Iterator[None]:
    """Hold this command's output ``out`` (:func:`olmo_flex_ext.outputs.claim_output`: never an
    input, one writer, checked writable) until the block ends. Under torchrun rank 0 holds it and
    every rank stops with its error."""
    from .outputs import claim_output, on_rank0

    settings = dict(
        inputs=list(inputs), overwrite=bool(getattr(args, "overwrite", False)), kind=kind,
        resume=resume, command=f"olmo-flex {getattr(args, 'command', '')}".strip(),
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        on_rank0(lambda: stack.enter_context(claim_output(out, **settings)))  # type: ignore[arg-type]
        yield


def report_written(what: str, out: str) -> int:
    """Tell the user (on stderr) that ``what`` was written to ``out``; returns exit status 0."""
    from rich.console import Console

    Console(stderr=True).print(f"{what} -> {out}")
    return 0
