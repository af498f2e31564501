"""Domain routers: the log-odds fit against a closed form, and the upcycled expert's gate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_helpers import D_MODEL, VOCAB, our_logits, randomize, tokens
from olmo_core.nn.feed_forward import FeedForwardConfig
from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import CheckpointError, save_model
from olmo_flex_ext.cli import main as cli
from olmo_flex_ext.compose import fit_log_odds
from olmo_flex_ext.hf import upcycle


def _gaussians(mean_own, mean_public, n=40000, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g) * 0.5 + torch.eye(d)
    cov = a @ a.T
    chol = torch.linalg.cholesky(cov)
    own = mean_own + torch.randn(n, d, generator=g) @ chol.T
    public = mean_public + torch.randn(n, d, generator=g) @ chol.T
    return own.double(), public.double(), cov.double()


def test_log_odds_fit_recovers_the_gaussian_closed_form():
    # Equal priors, shared covariance: log P(own|x)/P(public|x) = w.x + b with
    # w = S^-1 (m1 - m0), b = -(m1' S^-1 m1 - m0' S^-1 m0) / 2.
    m1 = torch.tensor([1.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    m0 = torch.tensor([0.5, 0.0, 0.0, -0.5], dtype=torch.float64)
    own, public, cov = _gaussians(m1, m0)
    inv = torch.linalg.inv(cov)
    w_true = inv @ (m1 - m0)
    b_true = float(-(m1 @ inv @ m1 - m0 @ inv @ m0) / 2)
    assert b_true < 0
    w, b, accuracy = fit_log_odds(own.float(), public.float(), l2=0.0)
    torch.testing.assert_close(w.double(), w_true, atol=0.05, rtol=0.05)
    assert b == pytest.approx(b_true, rel=0.03)
    assert 0.5 < accuracy < 1.0


def test_a_positive_bias_is_refit_at_zero():
    m1 = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    m0 = torch.tensor([-2.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # closed-form b > 0
    own, public, _ = _gaussians(m1, m0, n=5000)
    w, b, _ = fit_log_odds(own.float(), public.float(), l2=0.0)
    assert b == 0.0 and w[0] > 0


def _dense(path: Path) -> torch.nn.Module:
    config = TransformerConfig.llama_like(
        d_model=D_MODEL, vocab_size=VOCAB, n_layers=2, n_heads=4,
        block_name=TransformerBlockType.reordered_norm, qk_norm=True, layer_norm_eps=1e-6,
        feed_forward=FeedForwardConfig(hidden_size=48, bias=False),
    )  # fmt: skip
    model = randomize(config.build(init_device="cpu"), seed=5).eval()
    save_model(path, config, model.state_dict())
    return model


def _tokens(path: Path, low: int, high: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    rng.integers(low, high, 4096).astype(np.uint16).tofile(path)
    return str(path)


def test_domain_router_command_gives_the_upcycled_expert_its_log_odds(tmp_path):
    dense = _dense(tmp_path / "dense")
    own = _tokens(tmp_path / "own.npy", 0, 64, seed=1)  # two token ranges: separable domains
    public = _tokens(tmp_path / "public.npy", 32, VOCAB, seed=2)
    out = tmp_path / "router.safetensors"
    argv = ["domain-router", str(tmp_path / "dense"), "--data", own, "--public-data", public,
            "--seq-len", "32", "--num-seqs", "16", "--tokens-per-seq", "16", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    saved = load_file(str(out))
    assert saved["router"].shape == (2, 2, D_MODEL) and saved["expert_bias"].shape == (2, 1)
    assert torch.equal(saved["router"][:, 0], torch.zeros(2, D_MODEL))
    assert (saved["expert_bias"] <= 0).all()

    upcycle(tmp_path / "dense", tmp_path / "moe", num_experts=2, router_from=out)
    moe = load_model(tmp_path / "moe")
    x = tokens(3)
    torch.testing.assert_close(our_logits(moe, x), our_logits(dense, x), atol=1e-5, rtol=0)

    # The expert's routing probability is sigmoid(w.x + b) on the router input, computed by hand.
    inputs = {}
    hooks = [
        b.feed_forward_moe.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i, b in enumerate(moe.blocks.values())
    ]
    with torch.no_grad():
        moe(x)
    for h in hooks:
        h.remove()
    for i in range(2):
        h = inputs[i].reshape(-1, D_MODEL)
        gate = torch.sigmoid(h @ saved["router"][i, 1] + saved["expert_bias"][i, 0])
        router = moe.blocks[str(i)].feed_forward_moe.router
        logits = router.get_expert_logits(h)  # includes the expert bias
        torch.testing.assert_close(logits.softmax(-1)[:, 1], gate, atol=1e-5, rtol=0)
    with safe_open(str(out), "pt") as f:  # the fit tells the two token ranges apart
        assert all(a > 0.6 for a in json.loads(f.metadata()["accuracy"]))


def test_upcycle_refuses_a_positive_expert_bias(tmp_path):
    _dense(tmp_path / "dense")
    bad = tmp_path / "router.safetensors"
    save_file({"router": torch.zeros(2, 2, D_MODEL), "expert_bias": torch.ones(2, 1)}, str(bad))
    with pytest.raises(CheckpointError, match="positive"):
        upcycle(tmp_path / "dense", tmp_path / "moe", num_experts=2, router_from=bad)
