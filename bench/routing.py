"""Top-k routing over variable-width experts against dense matmuls doing the same FLOPs (CPU).

8 experts with widths spread from 11008/8 down to 2048/8, d_model 4096/8, top-2 routing of 4096
tokens. Variants, timed interleaved in one run (median of repeats), forward and forward+backward:

- ``routed``: ``VariableMoEMLP.forward_routed`` (sort once, per-expert contiguous blocks, gather back);
- ``grouped floor``: the same per-expert matmuls on inputs already grouped by expert (no routing,
  no gather, no weighting): what dispatch cannot beat;
- ``dense same FLOPs``: one SwiGLU MLP over all tokens whose width gives the same FLOPs as the
  routed experts (``sum_e tokens_e * width_e / tokens``).

    PYTHONPATH=. python bench/routing.py [--tokens 4096] [--repeats 7] [--threads 1,2]

Each thread count is measured separately: on a shared, busy machine two threads wait on each
other at every op, which penalises many small ops (routing) more than three big ones (dense), so
the one-thread ratio is the cleaner measure of dispatch overhead there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from olmo_flex_ext.nn.moe import VariableMoEMLP

WIDTHS = [1376, 1216, 1056, 896, 736, 576, 416, 256]  # 11008/8 ... 2048/8
D_MODEL = 512


def swiglu(x, w1, w2, w3):
    return (F.silu(F.linear(x, w1)) * F.linear(x, w3)) @ w2


def setup(tokens: int, top_k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mlp = VariableMoEMLP(d_model=D_MODEL, expert_widths=WIDTHS)
    x = torch.randn(tokens, D_MODEL, generator=g)
    probs = torch.randn(tokens, len(WIDTHS), generator=g).softmax(-1)
    weights, indices = probs.topk(top_k, dim=-1)
    counts = torch.bincount(indices.reshape(-1), minlength=len(WIDTHS)).tolist()
    grouped = [torch.randn(c, D_MODEL, generator=g) for c in counts]
    flops_width = round(sum(c * w for c, w in zip(counts, WIDTHS)) / tokens)
    dense = [torch.randn(flops_width, D_MODEL, generator=g) * 0.02 for _ in range(3)]
    grad_out = torch.randn(tokens, D_MODEL, generator=g)
    return mlp, x, weights, indices, grouped, dense, grad_out, counts, flops_width


def variants(tokens: int, top_k: int, backward: bool) -> Dict[str, Callable[[], None]]:
    mlp, x, weights, indices, grouped, dense, grad_out, _, _ = setup(tokens, top_k)
    for p in mlp.parameters():
        p.requires_grad_(backward)
    x.requires_grad_(backward)
    for t in grouped + dense:
        t.requires_grad_(backward)
    splits = [list(w.split(mlp.expert_widths)) for w in (mlp.w1, mlp.w2, mlp.w3)]

    def run(fn):
        def go():
            out = fn()
            if backward:
                out.backward(grad_out if out.shape == grad_out.shape else torch.ones_like(out))

        return go

    def routed():
        return mlp.forward_routed(x, weights, indices)

    def floor():
        outs = [
            swiglu(xe, splits[0][e], splits[1][e], splits[2][e])
            for e, xe in enumerate(grouped)
            if len(xe)
        ]
        return torch.cat(outs)

    def dense_same_flops():
        return swiglu(x, *dense)

    return {
        "routed": run(routed),
        "grouped floor": run(floor),
        "dense same FLOPs": run(dense_same_flops),
    }


def measure(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure with")
    args = parser.parse_args()
    *_, counts, width = setup(args.tokens, args.top_k)
    print(
        f"{len(WIDTHS)} experts {WIDTHS}, top-{args.top_k}, {args.tokens} tokens, d_model {D_MODEL}"
    )
    print(f"tokens per expert {counts}; dense MLP of the same FLOPs has width {width}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for backward in (False, True):
            med = measure(variants(args.tokens, args.top_k, backward), args.repeats)
            label = "forward+backward" if backward else "forward"
            base = med["dense same FLOPs"]
            print(f"\n{threads} thread(s), {label}: median of {args.repeats}")
            for name, t in med.items():
                print(f"  {name:<18} {t * 1e3:8.1f} ms   {t / base:5.2f}x dense same FLOPs")
            print(f"  routed / grouped floor: {med['routed'] / med['grouped floor']:.2f}x")


if __name__ == "__main__":
    main()
