"""Importance scoring against a plain forward pass of the same model on the same data.

    python bench/importance.py [--repeats 7] [--threads 1] [--clock cpu]

For a FlexOlmo-shaped model with every token on both experts (dense, like 2x7B) and one with
routed experts (top-1 of 3), it times, interleaved in one run (rotating order, median of the
repeats):

- ``forward``: read the calibration windows and run ``model(batch)`` under inference mode;
- ``importance``: :func:`olmo_flex_ext.prune.compute_importance` over the same windows (hooks,
  accumulation, data fingerprints, everything a real scoring run does).

and prints importance / forward. Target: at most 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

TARGET = 1.10


def interleaved(
    variants: Dict[str, Callable[[], object]], repeats: int, clock
) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm up
        fn()
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = clock()
            variants[name]()
            times[name].append(clock() - t)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--num-seqs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
    from olmo_flex_ext.data.tokens import TokenFiles
    from olmo_flex_ext.models import flex_olmo
    from olmo_flex_ext.prune import compute_importance

    shape = dict(d_model=512, n_layers=4, n_heads=8, vocab_size=4096)
    cases = {
        "dense 2 experts [1376, 688], top-2": dict(expert_widths=[1376, 688], top_k=2),
        "routed 3 experts [1024, 512, 512], top-1": dict(expert_widths=[1024, 512, 512], top_k=1),
    }
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = ensure_synthetic_tokens(Path(tmp), vocab_size=512, tokens_per_file=16384)
        data = TokenFiles(paths, np.uint16)
        windows = data.sample_windows(args.seq_len, args.num_seqs)
        print(
            f"{args.num_seqs} x {args.seq_len} tokens, batch {args.batch_size}, "
            f"{args.threads} thread(s), {args.clock} time, median of {args.repeats}"
        )
        for name, kw in cases.items():
            torch.manual_seed(0)
            model = flex_olmo(**shape, **kw).build(init_device="cpu").eval()

            def forward():
                with torch.inference_mode():
                    for i in range(0, len(windows), args.batch_size):
                        rows = np.stack(
                            [
                                data.read(w).astype(np.int64)
                                for w in windows[i : i + args.batch_size]
                            ]
                        )
                        model(torch.from_numpy(rows))

            def importance():
                compute_importance(
                    model,
                    data,
                    seq_len=args.seq_len,
                    num_seqs=args.num_seqs,
                    batch_size=args.batch_size,
                    progress=False,
                )

            t = interleaved({"forward": forward, "importance": importance}, args.repeats, clock)
            f, s = statistics.median(t["forward"]), statistics.median(t["importance"])
            ratio = s / f
            ok = ratio <= TARGET
            status |= not ok
            print(
                f"  {name:<42} forward {f * 1e3:7.1f} ms  importance {s * 1e3:7.1f} ms  "
                f"ratio {ratio:.3f}  ({'ok' if ok else 'ABOVE'} target {TARGET})"
            )
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
