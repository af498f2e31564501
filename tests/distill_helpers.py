"""Shared pieces of the distillation tests: a briefly trained tiny teacher, a pruned student."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from olmo_flex_ext.checkpoint import save_model
from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.models import tiny_flex

TEACHER_WIDTHS = [128, 96]
PRUNED_WIDTH = 16
SEQ = 64
VOCAB = 512


def train_teacher(out: Path, data: List[str], steps: int = 150, seed: int = 0) -> Path:
    """A tiny FlexOlmo trained with plain AdamW on ``data`` (CE), saved as a model-only
    checkpoint. Plain torch keeps this fast; the trainer is what the tests exercise elsewhere."""
    torch.manual_seed(seed)
    config = tiny_flex(TEACHER_WIDTHS, vocab_size=VOCAB)
    model = config.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    files = TokenFiles(data, np.uint16)
    windows = files.windows(SEQ)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        picks = rng.choice(len(windows), 8, replace=False)
        x = torch.from_numpy(np.stack([files.read(windows[i]) for i in picks]).astype(np.int64))
        logits = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model(out, config, model.state_dict(), overwrite=True)


def prune_first(teacher_path: Path, out: Path, width: int = PRUNED_WIDTH) -> Path:
    """The teacher with expert 1 cut to its first ``width`` neurons (a stand-in for real pruning)."""
    from olmo_flex_ext import load_model

    teacher = load_model(str(teacher_path))
    public = TEACHER_WIDTHS[0]
    state = {}
    for name, t in teacher.state_dict().items():
        if name.endswith(("mlp.w1", "mlp.w2", "mlp.w3")):
            t = torch.cat([t[:public], t[public : public + width]])
        state[name] = t.clone()
    config = tiny_flex([public, width], vocab_size=VOCAB)
    return save_model(out, config, state, overwrite=True)


def held_out_kl(student_path, teacher_path, data: List[str], n: int = 16) -> float:
    """Mean full-vocabulary KL(teacher || student) per position over ``n`` windows."""
    from olmo_flex_ext import load_model
    from olmo_flex_ext.distill.loss import full_kl

    files = TokenFiles(data, np.uint16)
    x = torch.from_numpy(
        np.stack([files.read(w) for w in files.sample_windows(SEQ, n)]).astype(np.int64)
    )
    with torch.no_grad():
        return float(full_kl(load_model(str(student_path))(x), load_model(str(teacher_path))(x)))
