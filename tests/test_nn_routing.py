"""Top-k routing over variable-width experts, opt-out and the expert bias, layer by layer."""

import pytest
import torch
import torch.nn.functional as F
from olmo_core.exceptions import OLMoConfigurationError

from olmo_flex_ext.nn.moe import VariableMoEConfig, VariableMoEMLP, variable_moe_config
from olmo_flex_ext.nn.router import FlexRouterConfig

D = 32


def per_token_reference(mlp, x, weights, indices):
    """Loop over tokens and their chosen experts, each expert's SwiGLU from its own rows."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], indices[t]):
            s = mlp.expert_slice(int(e))
            h = F.silu(x[t] @ mlp.w1[s].t()) * (x[t] @ mlp.w3[s].t())
            out[t] = out[t] + w * (h @ mlp.w2[s])
    return out


@pytest.mark.parametrize(
    "widths,top_k",
    [([40, 24, 8, 16], 1), ([40, 24, 8, 16], 2), ([8, 56, 24], 2), ([16, 8, 32, 24, 40], 4)],
)
def test_forward_routed_matches_per_token_loop(widths, top_k):
    torch.manual_seed(0)
    mlp = VariableMoEMLP(d_model=D, expert_widths=widths)
    x = torch.randn(37, D, requires_grad=True)
    probs = torch.randn(37, len(widths)).softmax(-1).requires_grad_(True)
    weights, indices = probs.topk(top_k, dim=-1)
    indices = indices.clone()
    indices[0] = torch.arange(top_k)  # some expert may get no token; routing must cope
    out = mlp.forward_routed(x, weights, indices)
    ref = per_token_reference(mlp, x, weights, indices)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(
        (out * g).sum(), [x, probs, mlp.w1, mlp.w2, mlp.w3], retain_graph=True
    )
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, probs, mlp.w1, mlp.w2, mlp.w3])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _layer(widths, top_k, opt_out=None, expert_bias=False, seed=0):
    config = variable_moe_config(widths, top_k, lb_loss_weight=0.01, z_loss_weight=0.001)
    config.router = FlexRouterConfig.from_router_config(config.router)
    config.router.expert_bias = expert_bias
    config.opt_out = opt_out
    torch.manual_seed(seed)
    return config.build(D, init_device="cpu")


def _without(layer, off, top_k):
    """A layer built without experts ``off``, holding the same weights as ``layer``'s others."""
    widths = layer.expert_widths
    keep = [e for e in range(len(widths)) if e not in off]
    small = _layer([widths[e] for e in keep], top_k)
    mlp, big = small.experts.mlp, layer.experts.mlp
    with torch.no_grad():
        rows = torch.cat([torch.arange(big.offsets[e], big.offsets[e + 1]) for e in keep])
        for n in ("w1", "w2", "w3"):
            getattr(mlp, n).copy_(getattr(big, n)[rows])
        small.router.weight.copy_(layer.router.weight.view(len(widths), D)[keep].reshape(-1))
    return small


@pytest.mark.parametrize("top_k,off", [(4, [2]), (2, [2]), (3, [0]), (2, [1, 3]), (1, [3])])
def test_opt_out_equals_layer_without_expert(top_k, off):
    layer = _layer([40, 24, 8, 16], top_k, opt_out=off)
    assert layer.router.top_k == min(top_k, 4 - len(off))
    small = _without(layer, off, min(top_k, 4 - len(off)))
    x = torch.randn(3, 11, D)
    layer.train(), small.train()
    a, b = layer(x), small(x)
    assert torch.equal(a, b)  # same computation on the same numbers
    # auxiliary losses are those of the smaller model too
    assert torch.equal(layer.router.load_balancing_loss, small.router.load_balancing_loss)
    layer.set_opt_out([])  # back on: all experts again
    assert layer.router.top_k == top_k and not torch.equal(layer(x), a)


def test_opt_out_config_round_trip_and_errors():
    config = variable_moe_config([64, 32, 16], 2)
    config.opt_out = [1]
    again = VariableMoEConfig.from_dict(config.as_config_dict())
    assert again.opt_out == [1]
    assert config.num_active_params(D) == config.router.num_params(D, 3) + 3 * D * (64 + 16)
    for bad in ([0, 1, 2], [3], [1, 1]):
        with pytest.raises(OLMoConfigurationError, match="opt_out"):
            VariableMoEConfig(num_experts=3, expert_widths=[64, 32, 16], opt_out=bad)


def test_expert_bias_is_clamped_at_zero_and_trains():
    layer = _layer([16, 16, 16], 3, expert_bias=True)
    router = layer.router
    assert [n for n, _ in router.named_parameters()] == ["weight", "expert_bias"]
    assert torch.equal(router.expert_bias, torch.zeros(2))  # starts neutral
    with torch.no_grad():
        router.expert_bias.copy_(torch.tensor([0.5, -0.7]))
    x = torch.randn(5, D)
    plain = x @ router.weight.view(3, D).t()
    expected = plain + torch.tensor([0.0, 0.0, -0.7])  # public 0; +0.5 clamps to 0
    torch.testing.assert_close(router.get_expert_logits(x), expected)
    router.get_expert_logits(x)[:, 2].sum().backward()
    assert router.expert_bias.grad[1] != 0 and router.expert_bias.grad[0] == 0
    layer.set_opt_out([1])  # the remaining experts keep their own bias
    torch.testing.assert_close(router.get_expert_logits(x), expected[:, [0, 2]])
