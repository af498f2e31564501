"""On a tiny trained model, loss after pruning (no retraining) rises as the width shrinks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from prune_helpers import batches, lm_loss, token_files

from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.prune import compute_importance, keep_indices, prune_model


@pytest.mark.slow
def test_loss_rises_as_width_shrinks(tmp_path):
    torch.manual_seed(0)
    paths = token_files(tmp_path / "data", tokens=32768)[:1]  # one bigram "domain"
    tokens = batches(paths, 65, 500)
    train, held = tokens[:400], tokens[400:]
    config = tiny_flex([64, 128], d_model=64, n_heads=4)
    model = config.build(init_device="cpu").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(100):
        b = train[torch.randint(0, len(train), (16,))]
        logits = model(b[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    scores = compute_importance(
        model, TokenFiles(paths, np.uint16), seq_len=64, num_seqs=32, batch_size=8, progress=False
    )
    losses = {128: lm_loss(model, held)}
    for width in (96, 48, 16):
        _, pruned = prune_model(config, model, keep_indices(scores, [[64, width]] * 2))
        losses[width] = lm_loss(pruned, held)
    print("held-out loss by domain-expert width:", losses)
    assert losses[128] < losses[96] < losses[48] < losses[16]
    # importance beats dropping neurons at random at the smallest width
    g = torch.Generator().manual_seed(0)
    rand = [[torch.arange(64), torch.sort(torch.randperm(128, generator=g)[:16]).values]] * 2
    _, random_pruned = prune_model(config, model, rand)
    assert losses[16] < lm_loss(random_pruned, held)
