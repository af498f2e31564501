"""Expert-only training of the variable-width MoE (public expert frozen) against what it should cost.

For each width list (public expert first, the trained domain expert second), timed interleaved in
one run, a training step of one MoE layer (forward + backward, input gradient included, as inside
a model):

- ``expert-only``: :class:`~olmo_flex_ext.nn.moe.VariableMoE` after ``set_trainable_experts([1])``
  (router, auxiliary losses, the frozen rows split off);
- ``trained rows only``: the reference, written here with plain torch ops: router softmax, both
  SwiGLU experts on every token, weight gradients for the domain expert's rows and the router only;
- ``masked fused``: every row trainable and the public expert's gradient rows zeroed afterwards
  (how expert-only training worked before the split).

It also prints the optimizer (AdamW) state bytes of expert-only training against the bytes the
trained rows need (the domain expert's MLP rows and router row): the frozen rows hold none; the
router weight is one shared tensor, so the public expert's router row (d_model floats) is the
difference.

    python -m bench.expert_training           # widths [2048,1024] and [2048,512], d_model 512, 4096 tokens
    python -m bench.expert_training --quick   # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from bench import add_timing_args, report, time_interleaved

CASES: List[List[int]] = [[2048, 1024], [2048, 512]]
GOAL = 1.03
"""Expert-only step at most this times the trained-rows-only reference."""


def _layer(widths: Sequence[int], d_model: int, split: bool):
    from olmo_flex_ext.nn.moe import variable_moe_config

    torch.manual_seed(0)
    layer = variable_moe_config(widths, len(widths)).build(d_model).train()
    if split:
        layer.experts.mlp.set_trainable_experts([1])
    return layer


def _step(module, x: torch.Tensor, grad: torch.Tensor, after=None):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)
        if after is not None:
            after()

    return step


def _reference(widths: Sequence[int], d_model: int, x: torch.Tensor, grad: torch.Tensor):
    """Router softmax and both experts on every token; weight gradients only for expert 1 and
    the router (plain tensors, nothing else)."""
    g = torch.Generator().manual_seed(0)

    def weight(rows: int, train: bool) -> torch.Tensor:
        return (torch.randn(rows, d_model, generator=g) * 0.02).requires_grad_(train)

    frozen = [weight(widths[0], False) for _ in range(3)]
    trained = [weight(widths[1], True) for _ in range(3)]
    router = weight(2, True)

    def step():
        for t in (*trained, router, x):
            t.grad = None
        h = x.reshape(-1, d_model)
        p = F.linear(h, router).softmax(-1)
        out = None
        for (w1, w2, w3), i in ((frozen, 0), (trained, 1)):
            y = (F.silu(h @ w1.t()) * (h @ w3.t())) @ w2 * p[:, i : i + 1]
            out = y if out is None else out + y
        out.view_as(x).backward(grad)

    return step


def _masked(layer):
    mlp = layer.experts.mlp
    public = mlp.expert_slice(0)

    def mask():
        for w in (mlp.w1, mlp.w2, mlp.w3):
            w.grad[public] = 0.0

    return mask


def optimizer_bytes(widths: Sequence[int], d_model: int, tokens: int = 64) -> Dict[str, int]:
    """AdamW state bytes after one step of expert-only training, and the trained rows' share."""
    layer = _layer(widths, d_model, split=True)
    optim = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-3)
    layer(torch.randn(1, tokens, d_model)).sum().backward()
    optim.step()
    state = sum(t.numel() * t.element_size() for s in optim.state.values()
                for t in s.values() if torch.is_tensor(t) and t.dim() > 0)  # fmt: skip
    trained_rows = 3 * widths[1] * d_model + d_model  # MLP rows + router row of expert 1
    return {"state": state, "trained rows": 2 * 4 * trained_rows}


def run_case(widths: Sequence[int], *, tokens: int, d_model: int, repeats: int, warmup: int,
             clock: str) -> Dict[str, float]:  # fmt: skip
    torch.manual_seed(0)
    x = torch.randn(tokens // 1024 or 1, min(tokens, 1024), d_model, requires_grad=True)
    grad = torch.randn_like(x)
    fused = _layer(widths, d_model, split=False)
    variants = {
        "expert-only": _step(_layer(widths, d_model, split=True), x, grad),
        "trained rows only": _reference(widths, d_model, x, grad),
        "masked fused": _step(fused, x, grad, after=_masked(fused)),
    }
    timings = time_interleaved(variants, repeats=repeats, warmup=warmup, clock=clock)
    title = (f"MoE expert-only step: widths {list(widths)} (expert 1 trains), {tokens} tokens, "
             f"d_model {d_model}, {torch.get_num_threads()} threads, {clock} clock")  # fmt: skip
    ratios = report(title, timings, baseline="trained rows only", goal={"expert-only": GOAL})
    sizes = optimizer_bytes(widths, d_model)
    print(f"optimizer state bytes: expert-only {sizes['state']:,d}, trained rows "
          f"{sizes['trained rows']:,d}, ratio {sizes['state'] / sizes['trained rows']:.4f} "
          "(goal 1.00)")  # fmt: skip
    return ratios


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.expert_training",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=512)
    add_timing_args(parser)
    parser.add_argument("--quick", action="store_true", help="small sizes (widths / 16)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale, tokens, d_model = (16, 512, 64) if args.quick else (1, args.tokens, args.d_model)
    for widths in CASES:
        run_case([w // scale for w in widths], tokens=tokens, d_model=d_model,
                 repeats=args.repeats, warmup=args.warmup, clock=args.clock)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
