"""Importance scores against a hand computation from a plain forward pass of the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from prune_helpers import batches, tiny_checkpoint, tiny_model, token_files

from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.prune.importance import compute_importance
from olmo_flex_ext.prune.scores import ImportanceScores, checkpoint_fingerprint, module_fingerprint

SEQ, NSEQ = 32, 7


def oracle_scores(model, tokens: torch.Tensor, method: str):
    """Minitron by hand: capture each MoE layer's input with a hook on ``feed_forward_moe``,
    route and run each expert's SwiGLU from the raw weights (float64), then mean over each
    sequence's routed positions and L2 over sequences."""
    inputs = {}
    hooks = [
        block.feed_forward_moe.register_forward_hook(
            lambda m, args, out, i=i: inputs.__setitem__(i, args[0].detach().clone())
        )
        for i, block in enumerate(model.blocks.values())
    ]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    out = []
    for i, block in enumerate(model.blocks.values()):
        moe = block.feed_forward_moe
        mlp = moe.experts.mlp
        x = inputs[i]  # (B, S, d)
        n_exp, top_k = len(mlp.expert_widths), moe.router.top_k
        # routing decided in float32 exactly like a router would, to avoid near-tie flips
        logits = F.linear(x.float(), moe.router.weight.view(n_exp, -1).float())
        probs = logits.softmax(-1).double()
        chosen = torch.zeros_like(probs, dtype=torch.bool).scatter(
            -1, torch.topk(logits.softmax(-1), top_k, dim=-1).indices, True
        )
        layer, off = [], 0
        xd = x.double()
        for e, w in enumerate(mlp.expert_widths):
            w1, w3 = mlp.w1[off : off + w].double(), mlp.w3[off : off + w].double()
            off += w
            act = (F.silu(xd @ w1.T) * (xd @ w3.T)).abs()
            if method == "minitron-weighted":
                act = act * probs[..., e : e + 1]
            sumsq = torch.zeros(w, dtype=torch.float64)
            for b in range(x.shape[0]):
                pos = chosen[b, :, e]
                if pos.any():
                    sumsq += act[b, pos].mean(0) ** 2
            layer.append(sumsq.sqrt())
        out.append(layer)
    return out


@pytest.mark.parametrize(
    "widths,top_k,method",
    [
        ((48, 32), None, "minitron"),  # every token to every expert (dense path)
        ((48, 32, 24), 1, "minitron"),  # routed path
        ((48, 32, 24), 2, "minitron-weighted"),
    ],
)
def test_scores_equal_hand_computation(tmp_path, widths, top_k, method):
    paths = token_files(tmp_path / "data")
    _, model = tiny_model(widths, top_k=top_k, seed=1)
    scores = compute_importance(
        model,
        TokenFiles(paths, np.uint16),
        seq_len=SEQ,
        num_seqs=NSEQ,
        method=method,
        batch_size=3,  # batches of 3, 3, 1
        progress=False,
    )
    expected = oracle_scores(model, batches(paths, SEQ, NSEQ), method)
    for layer, ref_layer in zip(scores.scores, expected):
        for got, ref in zip(layer, ref_layer):
            assert got.shape == ref.shape
            assert ref.min() >= 0 and ref.max() > 0
            torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)
    assert scores.metadata["method"] == method
    assert scores.metadata["tokens"] == str(SEQ * NSEQ)


def test_scores_file_roundtrip_and_fingerprint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", (48, 32))
    other = tiny_checkpoint(tmp_path / "other", (48, 32), seed=5)
    _, model = tiny_model((48, 32))
    assert module_fingerprint(model) == checkpoint_fingerprint(ckpt)
    assert checkpoint_fingerprint(other) != checkpoint_fingerprint(ckpt)
    scores = compute_importance(
        model,
        TokenFiles(token_files(tmp_path / "data"), np.uint16),
        seq_len=SEQ,
        num_seqs=4,
        progress=False,
    )
    scores.save(tmp_path / "s.safetensors")
    loaded = ImportanceScores.load(tmp_path / "s.safetensors")
    from safetensors.torch import load_file

    raw = load_file(tmp_path / "s.safetensors")
    assert sorted(raw) == ["layer0.expert0", "layer0.expert1", "layer1.expert0", "layer1.expert1"]
    assert all(t.dtype == torch.float32 for t in raw.values())
    assert loaded.widths == [[48, 32], [48, 32]]
    assert loaded.metadata["model_fingerprint"] == checkpoint_fingerprint(ckpt)
    assert "part-00.npy" in loaded.metadata["calibration"]
    for a, b in zip(loaded.scores, scores.scores):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


class _Interrupt(Exception):
    pass


def test_interrupted_scoring_resumes(tmp_path):
    paths = token_files(tmp_path / "data")
    data = TokenFiles(paths, np.uint16)
    _, model = tiny_model((48, 32, 24), top_k=1)
    kwargs = dict(seq_len=SEQ, num_seqs=NSEQ, batch_size=1, progress=False)
    full = compute_importance(model, data, **kwargs)

    calls = []

    def count(module, args, output):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise _Interrupt

    handle = model.blocks["0"].register_forward_hook(count)
    state = tmp_path / "partial.pt"
    fail_at = 5
    with pytest.raises(_Interrupt):
        compute_importance(model, data, state_path=state, save_every=1, **kwargs)
    assert state.is_file()
    calls.clear()
    fail_at = None
    resumed = compute_importance(model, data, state_path=state, save_every=1, **kwargs)
    handle.remove()
    assert len(calls) == NSEQ - 4  # four sequences were saved before the interruption
    assert not state.exists()
    for a, b in zip(full.scores, resumed.scores):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=0)
