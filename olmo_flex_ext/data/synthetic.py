"""Synthetic token files for the tiny train configs and tests (made on demand, never committed).

The stream is drawn from a fixed random sparse bigram model, so it has structure a tiny model can
learn (loss falls well below log(vocab)) and is identical on every machine for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np
from olmo_core.data import TokenizerConfig

from ..atomic import write_atomic

__all__ = ["TINY_TOKENIZER", "bigram_tokens", "ensure_synthetic_tokens"]

TINY_TOKENIZER = TokenizerConfig(vocab_size=512, eos_token_id=0, pad_token_id=1)
"""Tokenizer of the synthetic tiny data (ids 0..511, EOS 0)."""


def bigram_tokens(num_tokens: int, vocab_size: int, *, seed: int = 0, eos: int = 0) -> np.ndarray:
    """``num_tokens`` ids from a sparse bigram chain (each token has 4 likely successors);
    documents of 64-512 tokens end with ``eos``."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(1, vocab_size, size=(vocab_size, 4))
    out = np.empty(num_tokens, dtype=np.int64)
    tok, left = int(rng.integers(1, vocab_size)), int(rng.integers(64, 512))
    for i in range(num_tokens):
        if left == 0:
            out[i], tok, left = eos, int(rng.integers(1, vocab_size)), int(rng.integers(64, 512))
            continue
        out[i] = tok
        tok = int(successors[tok, rng.integers(0, 4)])
        left -= 1
    return out


def ensure_synthetic_tokens(
    directory: str | os.PathLike,
    *,
    vocab_size: int = 512,
    num_files: int = 2,
    tokens_per_file: int = 65536,
    seed: int = 0,
) -> List[str]:
    """Write (once) ``num_files`` uint16 token files to ``directory`` and return their paths.
    Safe to call from several ranks at once: each file is written to a temp name and renamed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_files):
        path = d / f"part-{i:02d}.npy"
        if not path.exists():
            data = bigram_tokens(tokens_per_file, vocab_size, seed=seed * 1000 + i).astype(
                np.uint16
            )
            write_atomic(path, data)
        paths.append(str(path))
    return paths
