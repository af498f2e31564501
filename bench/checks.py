"""What the file checks cost, as ratios measured within one run (variants interleaved, medians).

1. reading a checkpoint: ``load_model`` (restricted metadata reader, weights-only tensors, file
   sizes checked) over OLMo-core's plain reader loading the same weights into the same model
   (goal <= 1.05);
2. writing one: ``save_model`` (which records the SHA-256 of every weight file) over a bare
   ``dcp.save`` of the same tensors (no goal: hashing what was written is the cost of the
   record), and ``verify_checkpoint`` (the one hash pass of ``--verify``) over a load;
3. the pre-check before OLMo-core resumes a run (``check_for_olmo_core``: every pickle of a
   trainer checkpoint disassembled) over OLMo-core loading that checkpoint;
4. reading a top-k store with every row checked over decoding the same rows unchecked
   (goal <= 1.10);
5. claiming an output (lock file created and removed), in milliseconds.

    python -m bench.checks            # a 50M-parameter model, k = 128 over a 100k vocabulary
    python -m bench.checks --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from bench import add_timing_args, report, time_interleaved

GOALS = {"project load_model": 1.05, "read, rows checked": 1.10}


def _model(d_model: int, n_layers: int):
    from olmo_flex_ext.models import tiny_flex

    torch.manual_seed(0)
    config = tiny_flex([4 * d_model, 2 * d_model], d_model=d_model, n_layers=n_layers,
                       n_heads=max(1, d_model // 64), vocab_size=4096)  # fmt: skip
    return config, config.build(init_device="cpu")


def bench_checkpoints(
    root: Path, d_model: int, n_layers: int, repeats: int, warmup: int, clock: str
):
    import torch.distributed.checkpoint as dcp
    from olmo_core.distributed.checkpoint import load_model_and_optim_state

    from olmo_flex_ext.checkpoint import load_model, save_model, verify_checkpoint
    from olmo_flex_ext.safe_io import check_for_olmo_core

    config, model = _model(d_model, n_layers)
    state = model.state_dict()
    ckpt = save_model(root / "ck", config, state)
    params = sum(t.numel() for t in state.values())
    target = config.build(init_device="cpu")

    def olmo_core_load():
        load_model_and_optim_state(str(ckpt), target)

    def fresh(name: str) -> Path:
        shutil.rmtree(root / name, ignore_errors=True)
        return root / name

    def bare_save():
        writer = dcp.FileSystemWriter(str(fresh("bare")), thread_count=1, single_file_per_rank=False,
                                      per_thread_copy_ahead=0)  # fmt: skip
        dcp.save({"model": state}, storage_writer=writer, no_dist=True)

    title = f"checkpoints: {params / 1e6:.1f}M parameters, float32"
    t = time_interleaved({
        "OLMo-core load": olmo_core_load,
        "project load_model": lambda: load_model(ckpt),
        "verify (SHA-256 of every file)": lambda: verify_checkpoint(ckpt),
        "check before OLMo-core opens it": lambda: _uncached_check(check_for_olmo_core, ckpt),
    }, repeats=repeats, warmup=warmup, clock=clock)  # fmt: skip
    out = report(title + ", reading", t, "OLMo-core load", GOALS)
    t = time_interleaved({
        "bare dcp.save": bare_save,
        "save_model (records SHA-256)": lambda: save_model(fresh("saved"), config, state),
    }, repeats=repeats, warmup=warmup, clock=clock)  # fmt: skip
    out.update(report(title + ", writing", t, "bare dcp.save", GOALS))
    return out


def _uncached_check(check, ckpt: Path) -> None:
    from olmo_flex_ext import safe_io

    safe_io._CHECKED.clear()
    check(ckpt)


def bench_store(root: Path, tokens: int, vocab: int, k: int, repeats: int, warmup: int, clock: str):
    import json

    from olmo_flex_ext.distill import TopKStore
    from olmo_flex_ext.distill.codec import TopKCodec

    codec = TopKCodec(vocab, k)
    rng = np.random.default_rng(0)
    ids = np.sort(np.stack([rng.choice(vocab, k, replace=False) for _ in range(tokens)]), axis=1)
    rows = codec.encode(ids, -rng.random((tokens, k), dtype=np.float32) * 20)
    store = root / "store"
    store.mkdir()
    rows.tofile(store / "chunk-000000.bin")
    meta = {"format": "olmo-flex-topk", "version": 1, "vocab_size": vocab, "k": k,
            "sequence_length": tokens, "num_tokens": tokens, "tokenizer": {}, "token_files": [],
            "chunks": [{"file": "chunk-000000.bin", "start": 0, "tokens": tokens}]}  # fmt: skip
    (store / "meta.json").write_text(json.dumps(meta))
    s = TopKStore(store)
    batch = 4096
    t = time_interleaved({
        "decode, unchecked": lambda: codec.decode(s.read_rows(0, batch)),
        "read, rows checked": lambda: s.read(0, batch),
    }, repeats=repeats, warmup=warmup, clock=clock)  # fmt: skip
    return report(f"top-k store: {batch} rows of k = {k}, vocabulary {vocab}", t,
                  "decode, unchecked", GOALS)  # fmt: skip


def bench_claim(root: Path, repeats: int, warmup: int, clock: str) -> Dict[str, float]:
    from olmo_flex_ext.outputs import claim_output

    def claim():
        with claim_output(root / "out"):
            pass

    t = time_interleaved({"claim an output": claim}, repeats=repeats, warmup=warmup, clock=clock)
    print(f"claiming an output (lock created, leftovers looked for, lock removed): "
          f"{t['claim an output'].median * 1e3:.2f} ms")  # fmt: skip
    return {"claim ms": t["claim an output"].median * 1e3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    add_timing_args(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(d_model=64, n_layers=2) if args.quick else dict(d_model=512, n_layers=8)
    store = (
        dict(tokens=8192, vocab=4096, k=16)
        if args.quick
        else dict(tokens=8192, vocab=100352, k=128)
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_checkpoints(root, **size, repeats=args.repeats, warmup=args.warmup, clock=args.clock)
        bench_store(root, **store, repeats=args.repeats, warmup=args.warmup, clock=args.clock)
        bench_claim(root, repeats=args.repeats, warmup=args.warmup, clock=args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
