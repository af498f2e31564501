"""Language-model losses of an OLMo-core ``Transformer`` computed from its logits.

One function computes next-token losses (:func:`next_token_losses`); the held-out text loss
(:func:`token_file_loss`) and the demo's math answer loss (:mod:`olmo_flex_ext.demo.math_eval`)
both use it. A "model" here is anything called as ``model(input_ids) -> logits (batch, seq, vocab)``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.tokens import TokenFiles

__all__ = ["LogitsFn", "eval_mode", "model_device", "next_token_losses", "token_file_loss"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: LogitsFn) -> Iterator[None]:
    """``torch.no_grad`` and ``model.eval()``, restoring the model's training mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train()


def model_device(model: LogitsFn) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def next_token_losses(model: LogitsFn, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of each token given the ones before it: shape ``(batch, seq - 1)``,
    entry ``[b, t]`` is the loss of ``input_ids[b, t + 1]``. Computed in float32."""
    input_ids = input_ids.to(model_device(model))
    logits = model(input_ids)[:, :-1].float()
    targets = input_ids[:, 1:]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return losses.view(targets.shape)


def token_file_loss(
    model: LogitsFn,
    paths: Union[str, Sequence[str]],
    *,
    seq_len: int,
    dtype: Union[type, str, None] = None,
    vocab_size: Optional[int] = None,
    max_windows: Optional[int] = None,
    batch_size: int = 8,
) -> float:
    """Mean next-token loss over the full ``seq_len`` windows of token files (each file cut into
    windows like OLMo-core's fixed-length dataset; the first token of a window is not predicted).
    ``max_windows`` evaluates that many windows spread evenly over the data."""
    from ..data.tokens import token_dtype

    np_dtype = np.dtype(dtype) if dtype is not None else token_dtype(vocab_size or 0)
    files = TokenFiles(paths, np_dtype)
    windows = (
        files.sample_windows(seq_len, max_windows)
        if max_windows is not None and max_windows < len(files.windows(seq_len))
        else files.windows(seq_len)
    )
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(windows), batch_size):
            batch = np.stack([files.read(w).astype(np.int64) for w in windows[i : i + batch_size]])
            losses = next_token_losses(model, torch.from_numpy(batch))
            total += float(losses.double().sum())
            count += losses.numel()
    if count == 0:
        raise ValueError(f"no full {seq_len}-token window in {files.paths}")
    return total / count
