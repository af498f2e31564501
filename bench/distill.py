"""Distillation costs, as ratios measured within one run (variants interleaved, medians).

1. top-k store bytes per token at k = 128 (dolma2 and GPT-NeoX vocabularies; goal <= 528), and
   the codec's encode / decode time per token;
2. a training step (forward + backward) with the KD loss over one with OLMo-core's CE, at vocab
   50k and sequence 512 (goal <= 1.05; the model is small, what is measured is the loss);
3. teacher top-k generation (forward, float32 log-softmax, top-k, encoding, chunk writing) over a
   plain forward of the same model on the same windows (goal >= 0.85 throughput).

    python -m bench.distill            # reference sizes
    python -m bench.distill --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

GOALS = {"bytes": 528, "kd_over_ce": 1.05, "generation_over_forward": 0.85}


def time_interleaved(
    variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int
) -> Dict[str, float]:
    """Median seconds per variant; each round runs every variant once, in rotating order."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[n]()
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def _model(vocab: int, d_model: int, n_layers: int):
    from olmo_flex_ext.models import tiny_flex

    torch.manual_seed(0)
    model = tiny_flex(
        [2 * d_model, d_model],
        d_model=d_model,
        n_layers=n_layers,
        n_heads=max(1, d_model // 64),
        vocab_size=vocab,
    ).build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    return model


def bench_store(k: int = 128) -> Dict[str, float]:
    from olmo_flex_ext.distill.codec import TopKCodec

    rng = np.random.default_rng(0)
    out = {}
    for name, vocab in (("dolma2 (100,352)", 100352), ("gpt-neox (50,304)", 50304)):
        codec = TopKCodec(vocab, k)
        n = 2048
        ids = np.sort(np.argsort(rng.random((n, vocab), dtype=np.float32), axis=1)[:, :k], 1)
        lps = rng.standard_normal((n, k)).astype(np.float32)
        rows = codec.encode(ids, lps)
        t = time_interleaved(
            {"encode": lambda: codec.encode(ids, lps), "decode": lambda: codec.decode(rows)},
            repeats=5,
            warmup=1,
        )
        packed = (int(np.ceil(np.log2(vocab))) * k + 7) // 8 + 2 * k
        print(
            f"store, {name}, k={k}: {codec.row_bytes} bytes/token (goal <= {GOALS['bytes']}; "
            f"fixed-width ids would take {packed}; the seed's fp16+int32 took {6 * k}); "
            f"encode {t['encode'] / n * 1e6:.1f} us/token, decode {t['decode'] / n * 1e6:.1f} us/token"
        )
        out[name] = codec.row_bytes
    return out


def bench_step(
    vocab: int, seq: int, batch: int, d_model: int, n_layers: int, k: int, repeats: int, warmup: int
) -> float:
    from olmo_flex_ext.distill.loss import topk_kd_loss

    model = _model(vocab, d_model, n_layers).train()
    x = torch.randint(0, vocab, (batch, seq))
    labels = torch.cat([x[:, 1:], torch.full((batch, 1), -100)], 1)
    with torch.no_grad():
        t_lps, t_ids = torch.log_softmax(torch.randn(batch, seq, vocab) * 3, -1).topk(k, -1)
    n = (labels != -100).sum()

    def ce():
        model.zero_grad(set_to_none=True)
        out = model(x, labels=labels, loss_reduction="sum", loss_div_factor=n, return_logits=False)
        out.loss.backward()

    def kd():
        model.zero_grad(set_to_none=True)
        logits = model(x, loss_div_factor=n)
        (topk_kd_loss(logits, t_ids, t_lps, labels).loss / n).backward()

    t = time_interleaved({"CE step": ce, "KD step": kd}, repeats=repeats, warmup=warmup)
    ratio = t["KD step"] / t["CE step"]
    print(
        f"train step, vocab {vocab}, {batch} x {seq} tokens, d_model {d_model}, k={k}: "
        f"CE {t['CE step'] * 1e3:.0f} ms, KD {t['KD step'] * 1e3:.0f} ms, "
        f"KD / CE = {ratio:.3f} (goal <= {GOALS['kd_over_ce']})"
    )
    return ratio


def bench_generation(
    vocab: int,
    seq: int,
    batch: int,
    d_model: int,
    n_layers: int,
    k: int,
    windows: int,
    repeats: int,
    warmup: int,
) -> float:
    from olmo_flex_ext.data.tokens import TokenFiles
    from olmo_flex_ext.distill.codec import TopKCodec
    from olmo_flex_ext.distill.generate import _run_chunks

    model = _model(vocab, d_model, n_layers).eval()
    tmp = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    rng = np.random.default_rng(0)
    rng.integers(0, vocab, seq * windows, dtype=np.uint32).astype(np.uint16).tofile(tmp / "t.npy")
    files = TokenFiles(str(tmp / "t.npy"), np.uint16)
    wins = files.windows(seq)
    codec = TopKCodec(vocab, k)
    device = torch.device("cpu")

    def forward():
        with torch.no_grad():
            for i in range(0, len(wins), batch):
                x = np.stack([files.read(w) for w in wins[i : i + batch]]).astype(np.int64)
                model(torch.from_numpy(x))

    def generate():
        _run_chunks(model, files, [wins], [0], codec, tmp, batch, device, lambda n: None)

    t = time_interleaved(
        {"plain forward": forward, "generation": generate}, repeats=repeats, warmup=warmup
    )
    ratio = t["plain forward"] / t["generation"]
    tokens = seq * windows
    print(
        f"generation, vocab {vocab}, k={k}, {windows} x {seq} tokens, d_model {d_model}: "
        f"forward {tokens / t['plain forward']:.0f} tok/s, generation "
        f"{tokens / t['generation']:.0f} tok/s, throughput ratio {ratio:.3f} "
        f"(goal >= {GOALS['generation_over_forward']})"
    )
    return ratio


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--parts", default="store,step,generation", help="comma-separated subset")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab, seq = (8192, 128) if args.quick else (50304, 512)
    d_model, n_layers = (128, 2) if args.quick else (512, 4)
    if "store" in parts:
        bench_store()
    if "step" in parts:
        bench_step(
            vocab,
            seq,
            batch=2,
            d_model=d_model,
            n_layers=n_layers,
            k=128,
            repeats=args.repeats,
            warmup=args.warmup,
        )
    if "generation" in parts:
        bench_generation(
            vocab,
            seq,
            batch=2,
            d_model=d_model,
            n_layers=n_layers,
            k=128,
            windows=4,
            repeats=args.repeats,
            warmup=args.warmup,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
