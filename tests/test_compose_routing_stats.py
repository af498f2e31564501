"""Routing statistics against a computation by hand: the MoE layers' inputs captured with plain
hooks, softmax(x W^T) and its top-k counted per expert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch

from olmo_flex_ext.checkpoint import save_model
from olmo_flex_ext.compose import (
    RoutingStatistics,
    checkpoint_routing,
    routing_statistics,
    set_opt_out,
)
from olmo_flex_ext.data.synthetic import bigram_tokens
from olmo_flex_ext.errors import UserError
from olmo_flex_ext.models import tiny_flex

D_MODEL = 32
WIDTHS = [64, 48, 32, 16]
TOP_K = 2
DOMAINS = {"general": 1, "math": 2, "code": 3}


def config():
    return tiny_flex(WIDTHS, top_k=TOP_K, d_model=D_MODEL, n_layers=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = config().build(init_device="cpu")
    with torch.no_grad():  # routers that prefer different experts for different tokens
        for block in m.blocks.values():
            block.feed_forward_moe.router.weight.normal_(0, 0.5)
    return m.eval()


def batches(seed: int) -> List[torch.Tensor]:
    ids = torch.from_numpy(bigram_tokens(6 * 24, 512, seed=seed).astype(np.int64)).view(6, 24)
    return list(ids.split(4))


def by_hand(model, data: Dict[str, List[torch.Tensor]], off: Sequence[int] = ()):
    """(share, probability, tokens) per domain from the MoE inputs, computed without the routers."""
    on = [e for e in range(len(WIDTHS)) if e not in off]
    k = min(TOP_K, len(on))
    inputs: Dict[int, List[torch.Tensor]] = {}
    blocks = list(model.blocks.values())
    hooks = [
        b.feed_forward_moe.register_forward_pre_hook(
            lambda m, a, i=i: inputs.setdefault(i, []).append(a[0].reshape(-1, D_MODEL))
        )
        for i, b in enumerate(blocks)
    ]
    share, prob, tokens = {}, {}, {}
    try:
        for domain, bs in data.items():
            inputs.clear()
            with torch.no_grad():
                for ids in bs:
                    model(ids)
            share[domain], prob[domain] = [], []
            for i, block in enumerate(blocks):
                x = torch.cat(inputs[i])
                w = block.feed_forward_moe.router.weight.detach().view(len(WIDTHS), D_MODEL)[on]
                p = (x.float() @ w.float().T).softmax(-1)
                chosen = torch.zeros(len(WIDTHS), dtype=torch.float64)
                for e in p.topk(k, dim=-1).indices.flatten().tolist():
                    chosen[on[e]] += 1
                mean = torch.zeros(len(WIDTHS), dtype=torch.float64)
                mean[on] = p.double().mean(0)
                share[domain].append((chosen / x.shape[0]).tolist())
                prob[domain].append(mean.tolist())
            tokens[domain] = sum(int(ids.numel()) for ids in bs)
    finally:
        for h in hooks:
            h.remove()
    return share, prob, tokens


def assert_matches(stats: RoutingStatistics, expected) -> None:
    share, prob, tokens = expected
    assert stats.tokens == tokens and stats.domains == list(tokens)
    for d in stats.domains:
        np.testing.assert_allclose(stats.share[d], share[d], rtol=0, atol=1e-6)
        np.testing.assert_allclose(stats.probability[d], prob[d], rtol=0, atol=1e-6)


def test_statistics_match_a_computation_by_hand(model):
    data = {d: batches(seed) for d, seed in DOMAINS.items()}
    stats = routing_statistics(model, data, experts=["public", "a", "b", "c"])
    assert_matches(stats, by_hand(model, data))
    assert stats.num_experts == 4 and stats.top_k == TOP_K and stats.opt_out == []
    assert stats.n_layers == 2 and stats.experts == ["public", "a", "b", "c"]
    for d in stats.domains:  # shares sum to top_k, probabilities to 1, every layer
        for s, p in zip(stats.share[d], stats.probability[d]):
            assert sum(s) == pytest.approx(TOP_K) and sum(p) == pytest.approx(1.0)
    # the routers are not trivial: some expert is chosen for some tokens and not for others
    assert any(0 < s < 1 for d in stats.domains for row in stats.share[d] for s in row)
    assert stats.layer_mean(stats.share, "math") == pytest.approx(
        list(np.mean(stats.share["math"], axis=0))
    )


def test_opted_out_expert_gets_nothing(model):
    data = {d: batches(seed) for d, seed in DOMAINS.items()}
    stats = routing_statistics(model, data, opt_out=[1])
    assert stats.opt_out == [1]
    set_opt_out(model, [1])  # the expected numbers come from the model with expert 1 off
    try:
        expected = by_hand(model, data, off=[1])
        assert_matches(routing_statistics(model, data), expected)  # the model's own setting
    finally:
        set_opt_out(model, [])
    assert_matches(stats, expected)
    for d in stats.domains:
        assert all(row[1] == 0 for row in stats.share[d] + stats.probability[d])
    assert all(r.opt_out == [] for r in (b.feed_forward_moe.router for b in model.blocks.values()))
    assert not model.training


def _tokens(root: Path, name: str, seed: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    bigram_tokens(2048, 512, seed=seed).astype(np.uint16).tofile(root / f"{name}.npy")
    return str(root / f"{name}.npy")


def test_checkpoint_routing_and_json_round_trip(model, tmp_path):
    ckpt = save_model(tmp_path / "model", config(), model.state_dict())
    globs = {d: _tokens(tmp_path / "data", d, seed) for d, seed in DOMAINS.items()}
    stats = checkpoint_routing(ckpt, globs, seq_len=24, num_seqs=5, opt_out=[2])
    from olmo_flex_ext.data.tokens import TokenFiles

    data = {}
    for d, g in globs.items():
        files = TokenFiles(g, np.uint16)
        rows = np.stack([files.read(w) for w in files.sample_windows(24, 5)]).astype(np.int64)
        data[d] = list(torch.from_numpy(rows).split(8))
    set_opt_out(model, [2])
    try:
        assert_matches(stats, by_hand(model, data, off=[2]))
    finally:
        set_opt_out(model, [])
    assert stats.info["seq_len"] == 24 and stats.info["num_seqs"] == 5
    assert [x["name"] for x in stats.info["data"]] == list(DOMAINS)

    path = stats.save(tmp_path / "routing.json")
    assert RoutingStatistics.load(path) == stats
    assert RoutingStatistics.from_json(json.loads(json.dumps(stats.to_json()))) == stats


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("share"), "missing 'share'"),
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (lambda d: d.update(top_k=9), "top_k must be an integer in 1..4"),
        (lambda d: d.update(experts=["a"]), "experts must be null or a list of 4 names"),
        (lambda d: d["tokens"].pop("math"), "tokens must have one count per domain"),
        (lambda d: d["share"]["math"][0].pop(), "share\\['math'\\] layer 0 must list 4 experts"),
        (lambda d: d["probability"]["code"][1].__setitem__(0, float("nan")), "not a number"),
        (lambda d: d["probability"]["code"][1].__setitem__(0, 0.0), "sums to"),
        (lambda d: d.update(opt_out=[0]), "routes to a switched-off expert"),
        (lambda d: d["share"]["code"].pop(), "share\\['code'\\] has 1 layers, others 2"),
    ],
)
def test_bad_file_is_refused_naming_it(model, tmp_path, edit, message):
    stats = routing_statistics(model, {d: batches(seed)[:1] for d, seed in DOMAINS.items()})
    data = stats.to_json()
    edit(data)
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as e:
        RoutingStatistics.load(path)
    assert str(path) in str(e.value)


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "routing.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match=f"cannot read routing statistics {path}"):
        RoutingStatistics.load(path)
