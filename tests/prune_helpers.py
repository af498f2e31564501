"""Shared helpers of the pruning tests: tiny models, checkpoints and token files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from olmo_flex_ext.checkpoint import save_model
from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.models import tiny_flex


def tiny_model(
    widths: Sequence[int], top_k=None, seed: int = 0, d_model: int = 32, n_heads: int = 2, **shape
):
    torch.manual_seed(seed)
    config = tiny_flex(list(widths), top_k=top_k, d_model=d_model, n_heads=n_heads, **shape)
    model = config.build(init_device="cpu")
    # Larger expert weights than the init so that neurons differ clearly in importance.
    with torch.no_grad():
        for block in model.blocks.values():
            mlp = block.feed_forward_moe.experts.mlp
            for w in (mlp.w1, mlp.w2, mlp.w3):
                w.normal_(0, 0.2)
            block.feed_forward_moe.router.weight.normal_(0, 0.5)
    return config, model.eval()


def tiny_checkpoint(path: Path, widths: Sequence[int], top_k=None, seed: int = 0, **shape) -> Path:
    config, model = tiny_model(widths, top_k=top_k, seed=seed, **shape)
    save_model(path, config, model.state_dict())
    return path


def token_files(directory: Path, seed: int = 0, tokens: int = 4096) -> List[str]:
    return ensure_synthetic_tokens(directory, vocab_size=512, tokens_per_file=tokens, seed=seed)


def batches(paths: List[str], seq_len: int, num_seqs: int) -> torch.Tensor:
    """The same windows the importance pass uses, as one (num_seqs, seq_len) tensor."""
    data = TokenFiles(paths, np.uint16)
    rows = [data.read(w).astype(np.int64) for w in data.sample_windows(seq_len, num_seqs)]
    return torch.from_numpy(np.stack(rows))


def lm_loss(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(tokens[:, :-1])
        return float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        )
