"""The variable-width MoE layer, forward + backward, against what it should cost.

For each width list it times, interleaved in one run:

- ``variable MoE``: :class:`~olmo_flex_ext.nn.moe.VariableMoE` (router, aux losses, experts) in
  training mode;
- ``dense SwiGLU <W>``: one OLMo-core SwiGLU MLP whose width is the sum of the expert widths (the
  floor when every token visits every expert);
- ``padded to widest``: the same MoE with every expert as wide as the widest one (what a
  one-width MoE would need to hold these experts).

    python -m bench.moe                 # 4096 tokens, d_model 512 (the reference sizes)
    python -m bench.moe --quick         # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from bench import add_timing_args, report, time_interleaved

CASES: List[Tuple[List[int], int]] = [
    ([2048, 512], 2),
    ([2048, 2048], 2),
    ([2048, 1024, 512, 256], 2),
]
GOAL_TOP_ALL = 1.05
"""Goal for top-k == num_experts: variable MoE at most this times the dense-equivalent MLP."""


def _fwd_bwd(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)

    return step


def run_case(
    widths: Sequence[int],
    top_k: int,
    *,
    tokens: int,
    d_model: int,
    repeats: int,
    warmup: int,
    clock: str = "wall",
    seq_len: int = 1024,
) -> Dict[str, float]:
    """Time one width list; print the table; return variant -> ratio to the dense MLP."""
    from olmo_core.nn.feed_forward import FeedForwardConfig

    from olmo_flex_ext.nn.moe import variable_moe_config

    torch.manual_seed(0)
    seq_len = min(seq_len, tokens)
    x = torch.randn(tokens // seq_len, seq_len, d_model, requires_grad=True)
    grad = torch.randn_like(x)
    total = sum(widths)
    dense_name = f"dense SwiGLU {total}"
    variants = {
        "variable MoE": _fwd_bwd(
            variable_moe_config(widths, top_k).build(d_model).train(), x, grad
        ),
        dense_name: _fwd_bwd(
            FeedForwardConfig(hidden_size=total, bias=False).build(d_model), x, grad
        ),
    }
    padded = [max(widths)] * len(widths)
    if list(widths) != padded:
        variants[f"padded to widest ({max(widths)})"] = _fwd_bwd(
            variable_moe_config(padded, top_k).build(d_model).train(), x, grad
        )
    timings = time_interleaved(variants, repeats=repeats, warmup=warmup, clock=clock)
    goal = {"variable MoE": GOAL_TOP_ALL} if top_k == len(widths) else None
    title = (
        f"MoE fwd+bwd: widths {list(widths)}, top-{top_k} of {len(widths)}, "
        f"{tokens} tokens, d_model {d_model}, {torch.get_num_threads()} threads, {clock} clock"
    )
    return report(title, timings, baseline=dense_name, goal=goal)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.moe", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=512)
    add_timing_args(parser)
    parser.add_argument("--quick", action="store_true", help="small sizes (widths / 16)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale, tokens, d_model = (16, 512, 64) if args.quick else (1, args.tokens, args.d_model)
    for widths, top_k in CASES:
        run_case(
            [w // scale for w in widths],
            top_k,
            tokens=tokens,
            d_model=d_model,
            repeats=args.repeats,
            warmup=args.warmup,
            clock=args.clock,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
