"""Reading OLMo-core token files (flat, headerless uint16/uint32 arrays; documents end with EOS).

One reader for every tool that walks token data outside the trainer (importance calibration,
teacher top-k generation, evaluation): the same path expansion, dtype rule, fingerprints and the
same windows as OLMo-core's fixed-sequence-length dataset (each file cut into ``seq_len`` chunks).
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["token_dtype", "expand_paths", "TokenFiles", "Window", "DTYPES", "sampled_sha256"]

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def token_dtype(vocab_size: int, override: Optional[str] = None) -> type:
    """numpy dtype of token files: ``override`` if given, else uint16 when every id fits."""
    if override is not None:
        if override not in DTYPES:
            raise OLMoConfigurationError(
                f"unknown token dtype {override!r}; use one of {', '.join(DTYPES)}"
            )
        return DTYPES[override]
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def expand_paths(patterns: Union[str, Sequence[str]]) -> List[str]:
    """Sorted, de-duplicated files matching one or more globs (comma-separated also works)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = [p for pat in patterns for p in pat.split(",") if p]
    paths = sorted({p for pat in patterns for p in glob.glob(os.path.expanduser(pat))})
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise OLMoConfigurationError(
            f"no token files match {list(patterns)}; check the path or glob (quote it in the shell)"
        )
    return paths


@dataclass(frozen=True)
class Window:
    """``tokens[start:start + length]`` of file ``file`` (``offset`` = position in all files)."""

    file: int
    start: int
    length: int
    offset: int


class TokenFiles:
    """Memory-mapped token files in sorted path order, addressed as one long token stream.

    With ``vocab_size``, every window read is checked: an id at or above it stops the reader with
    an error naming the file and position (a check that costs one ``max`` per window)."""

    def __init__(
        self, paths: Union[str, Sequence[str]], dtype: type, vocab_size: Optional[int] = None
    ):
        self.paths = expand_paths(paths)
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        self.sizes: List[int] = []
        for p in self.paths:
            nbytes = os.path.getsize(p)
            if nbytes % self.dtype.itemsize:
                raise OLMoConfigurationError(
                    f"{p} has {nbytes} bytes, not a whole number of {self.dtype.name} tokens; "
                    "is --dtype right (uint16 below a 65536-token vocabulary, else uint32)?"
                )
            self.sizes.append(nbytes // self.dtype.itemsize)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def array(self, file: int) -> np.ndarray:
        return np.memmap(self.paths[file], dtype=self.dtype, mode="r")

    def read(self, window: Window) -> np.ndarray:
        tokens = np.asarray(self.array(window.file)[window.start : window.start + window.length])
        if self.vocab_size is not None and tokens.size and int(tokens.max()) >= self.vocab_size:
            self._out_of_vocab(window.file, window.start, tokens)
        return tokens

    def check_vocab(self, sample: int = 1 << 20) -> None:
        """Check the first ``sample`` tokens of each file against ``vocab_size`` (a cheap check
        before a model loads; :meth:`read` checks every window it reads)."""
        if self.vocab_size is None:
            return
        for f, size in enumerate(self.sizes):
            head = np.asarray(self.array(f)[:sample]) if size else None
            if head is not None and int(head.max()) >= self.vocab_size:
                self._out_of_vocab(f, 0, head)

    def _out_of_vocab(self, file: int, start: int, tokens: np.ndarray) -> None:
        pos = int(np.argmax(tokens >= self.vocab_size))
        raise OLMoConfigurationError(
            f"{self.paths[file]}: token {start + pos:,d} is id {int(tokens[pos])}, at or above "
            f"the model's vocabulary of {self.vocab_size}; is the token dtype right "
            f"({self.dtype.name}), and are these files tokenized for this model?"
        )

    def windows(self, seq_len: int, *, partial: bool = False) -> List[Window]:
        """Each file cut into ``seq_len`` chunks, in order, like OLMo-core's FSL dataset.
        With ``partial`` a shorter last chunk of each file is included too."""
        if seq_len <= 0:
            raise OLMoConfigurationError(f"sequence length must be positive, got {seq_len}")
        out = []
        for f, size in enumerate(self.sizes):
            for start in range(0, size, seq_len):
                length = min(seq_len, size - start)
                if length == seq_len or partial:
                    out.append(Window(f, start, length, int(self.offsets[f]) + start))
        return out

    def sample_windows(self, seq_len: int, num: int) -> List[Window]:
        """``num`` full windows spread evenly over the data (deterministic)."""
        full = self.windows(seq_len)
        if num > len(full):
            raise OLMoConfigurationError(
                f"asked for {num} sequences of {seq_len} tokens but the data has only {len(full)}; "
                "lower the number of sequences or the sequence length, or add data"
            )
        picks = np.linspace(0, len(full), num, endpoint=False).astype(np.int64)
        return [full[i] for i in picks]

    def fingerprint(self) -> List[dict]:
        """Per file: name, token count, and a sha256 of its size and sampled content."""
        return [
            {"name": Path(p).name, "tokens": n, "sha256": sampled_sha256(p)}
            for p, n in zip(self.paths, self.sizes)
        ]


def sampled_sha256(path: str, block: int = 1 << 20, samples: int = 16) -> str:
    """sha256 of a file's size and content (for large files: 16 evenly spaced 1 MiB blocks)."""
    # Hashing whole multi-GB token files would take minutes; size + evenly spaced 1 MiB blocks
    # catches truncation, regeneration and swapped files, which is what the check is for.
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= block * samples:
            h.update(f.read())
        else:
            for i in range(samples):
                f.seek((size - block) * i // (samples - 1))
                h.update(f.read(block))
    return h.hexdigest()
