"""The variable-width MoE against an independent per-token reference, and its layout against
OLMo-core's dropless MoE."""

import pytest
import torch
import torch.nn.functional as F
from olmo_core.nn.moe import MoEConfig, MoERouterConfig, MoEType
from olmo_core.nn.transformer import TransformerConfig

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.nn.moe import ExpertRouting, variable_moe_config

D_MODEL = 16


def reference_moe(x, router_w, w1, w2, w3, widths, top_k):
    """A per-token loop: softmax router, top-k experts, each expert a SwiGLU MLP on its own rows
    of the fused weights, outputs summed with the (not renormalised) router probabilities."""
    num_experts = len(widths)
    starts = [sum(widths[:e]) for e in range(num_experts)]
    outs = []
    for t in range(x.shape[0]):
        xt = x[t]
        probs = torch.softmax(router_w.view(num_experts, -1) @ xt, dim=-1)
        chosen = torch.topk(probs, top_k).indices.tolist()
        yt = torch.zeros_like(xt)
        for e in chosen:
            rows = slice(starts[e], starts[e] + widths[e])
            hidden = F.silu(w1[rows] @ xt) * (w3[rows] @ xt)
            yt = yt + probs[e] * (hidden @ w2[rows])
        outs.append(yt)
    return torch.stack(outs)


CASES = [
    ([7, 3], 1),
    ([7, 3], 2),
    ([5, 11, 2], 1),
    ([5, 11, 2], 2),
    ([5, 11, 2], 3),
    ([9, 1, 4, 13], 1),
    ([9, 1, 4, 13], 2),
    ([9, 1, 4, 13], 3),
    ([9, 1, 4, 13], 4),
    ([6, 6, 6], 2),
]


@pytest.mark.parametrize("widths,top_k", CASES, ids=[f"{w}-top{k}" for w, k in CASES])
def test_forward_backward_match_per_token_reference(widths, top_k):
    torch.manual_seed(sum(widths) * 10 + top_k)
    moe = variable_moe_config(widths, top_k).build(D_MODEL).eval()  # eval: no aux losses
    with torch.no_grad():  # larger router weights so probabilities are far from uniform
        moe.router.weight.normal_(0, 0.5)
    x = torch.randn(3, 5, D_MODEL, requires_grad=True)
    out = moe(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    raw = {n: p.detach().clone().requires_grad_(True) for n, p in moe.named_parameters()}
    x_ref = x.detach().clone().requires_grad_(True)
    ref = reference_moe(
        x_ref.view(-1, D_MODEL),
        raw["router.weight"],
        raw["experts.mlp.w1"],
        raw["experts.mlp.w2"],
        raw["experts.mlp.w3"],
        widths,
        top_k,
    ).view_as(out)
    ref.backward(grad_out)

    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    for name, p in moe.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, raw[name].grad, rtol=1e-5, atol=1e-6, msg=name)


def test_unrouted_expert_gets_zero_grad_and_probe_sees_routing():
    """top-1 of 3 with the router forced to expert 2: experts 0/1 get zero grads, and the probe
    reports each expert's tokens and probabilities."""
    widths = [4, 6, 5]
    moe = variable_moe_config(widths, 1).build(D_MODEL).eval()
    with torch.no_grad():
        w = moe.router.weight.view(3, D_MODEL)
        w.zero_()
        w[2, 0] = 50.0
    x = torch.randn(2, 3, D_MODEL)
    x[..., 0] = x[..., 0].abs() + 0.5  # positive feature 0 -> expert 2 wins
    seen = []
    hook = moe.experts.mlp.probe.register_forward_hook(
        lambda mod, args, out: seen.append((args[0].shape, args[1]))
    )
    moe(x).sum().backward()
    hook.remove()
    mlp = moe.experts.mlp
    for e in (0, 1):
        assert torch.all(mlp.w1.grad[mlp.expert_slice(e)] == 0)
    assert mlp.w1.grad[mlp.expert_slice(2)].abs().sum() > 0
    assert len(seen) == 1
    shape, routing = seen[0]
    assert isinstance(routing, ExpertRouting) and routing.expert == 2
    assert shape == (6, 5) and routing.tokens.tolist() == list(range(6))
    assert routing.batch_shape == (2, 3)


def test_equal_widths_match_olmo_core_dropless_layout():
    """With equal widths the whole model has OLMo-core's dropless MoE parameter names/shapes."""
    kw = dict(d_model=32, n_layers=2, n_heads=4, vocab_size=128)
    ours = tiny_flex([48, 48, 48], top_k=2, **kw).build(init_device="cpu")
    stock_config = TransformerConfig.llama_like_moe(
        **kw,
        num_experts=3,
        top_k=2,
        expert_hidden_size=48,
        reordered_norm=True,
        qk_norm=True,
        rope_theta=500_000,
        layer_norm_eps=1e-6,
    )
    stock_config.block.feed_forward_moe = MoEConfig(
        name=MoEType.dropless,
        num_experts=3,
        hidden_size=48,
        router=MoERouterConfig(top_k=2),
        z_loss_weight=0.001,
    )
    stock = stock_config.build(init_device="cpu")
    assert type(stock.blocks["0"].feed_forward_moe).__name__ == "DroplessMoE"
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(ours) == shapes(stock)
    assert ours.num_params == stock.num_params


def test_dense_path_probe_sees_every_expert_with_its_probabilities():
    moe = variable_moe_config([4, 6], 2).build(D_MODEL).eval()
    x = torch.randn(2, 3, D_MODEL)
    seen = []
    hook = moe.experts.mlp.probe.register_forward_hook(lambda mod, args, out: seen.append(args))
    with torch.no_grad():
        moe(x)
    hook.remove()
    probs = torch.softmax(x.view(-1, D_MODEL) @ moe.router.weight.view(2, -1).t(), dim=-1)
    assert [a[0].shape for a in seen] == [(6, 4), (6, 6)]
    for e, (_, routing) in enumerate(seen):
        assert routing.expert == e and routing.tokens is None and routing.batch_shape == (2, 3)
        torch.testing.assert_close(routing.weights, probs[:, e])
