"""torch.compile with the variable-width MoE, compiled explicitly on CPU with inductor (OLMo-core
skips ``compile_model`` without CUDA): with every expert active the blocks compile to whole
graphs, and loss and gradients equal eager, also with ``budget`` activation checkpointing (which
needs compile) and with the frozen experts split off; the routed path breaks at data-dependent
shapes, for the reason documented in docs/performance.md."""

import copy

import pytest
import torch
import torch.nn.functional as F
from olmo_core.nn.transformer.config import TransformerActivationCheckpointingMode as Mode
from torch._dynamo.utils import counters

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.train.trainable import set_trainable_experts


@pytest.fixture
def reset_compile():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._functorch.config.activation_memory_budget = 1.0  # a global that budget mode sets
    torch._dynamo.reset()


def step(m, x):
    m.zero_grad(set_to_none=True)
    logits = m(x)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in m.named_parameters()
             if p.grad is not None}  # fmt: skip
    return loss.detach(), grads


@pytest.mark.parametrize("split", [False, True], ids=["all-experts", "expert-only"])
def test_compiled_blocks_have_no_graph_breaks_and_match_eager(split, reset_compile):
    torch.manual_seed(0)
    eager = tiny_flex([48, 16]).build(init_device="cpu")
    eager.init_weights(device=torch.device("cpu"), max_seq_len=32)
    if split:
        set_trainable_experts(eager, [1])
    eager.train()
    compiled = copy.deepcopy(eager)
    compiled.apply_activation_checkpointing(Mode.budget, activation_memory_budget=0.5)
    compiled.apply_compile()  # what OLMo-core's compile_model=True does on CUDA

    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    (loss, grads), (c_loss, c_grads) = step(eager, x), step(compiled, x)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    assert c_grads.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(c_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_routed_path_breaks_only_at_data_dependent_expert_sizes(reset_compile):
    moe = tiny_flex([48, 16], top_k=1).build(init_device="cpu").blocks["0"].feed_forward_moe
    explained = torch._dynamo.explain(moe.train())(torch.randn(2, 8, 64))
    assert explained.graph_break_count > 0
    for reason in explained.break_reasons:
        assert "bincount" in str(reason.reason) or "tolist" in str(reason.reason), reason.reason
