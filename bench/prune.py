"""Peak memory of ``olmo-flex prune`` on a synthetic ~2B-parameter checkpoint (bf16).

    python bench/prune.py [--workdir /tmp] [--keep]

Writes a model-only checkpoint of a FlexOlmo with d_model 2048, 14 layers, two experts of 8192
and a 100352 vocabulary (random bf16 tensors, generated one at a time through ``LazyTensor``),
a scores file for it, then runs ``olmo-flex prune --widths 8192,4096`` in a subprocess and reports
its peak resident memory (``ru_maxrss`` of that process) next to the checkpoint size and the RSS
of a process that only imports the same modules. Target: peak at most 2 GB. The synthetic files
are deleted afterwards. Holds ``/tmp/olmo-flex-bigmem.lock`` while it runs.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET_BYTES = 2_000_000_000
LOCK = "/tmp/olmo-flex-bigmem.lock"


def run_measured(cmd) -> tuple:
    """(exit status, peak RSS bytes, seconds) of a child process. posix_spawn, unlike fork, does
    not start the child with a copy of this process's resident pages, so ru_maxrss is the child's."""
    t = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, dict(os.environ))
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, time.perf_counter() - t


def write_synthetic(path: Path):
    from olmo_flex_ext.checkpoint import LazyTensor, save_model
    from olmo_flex_ext.models import flex_olmo

    config = flex_olmo(
        d_model=2048, n_layers=14, n_heads=16, vocab_size=100352, expert_widths=[8192, 8192]
    )
    shapes = {k: tuple(v.shape) for k, v in config.build(init_device="meta").state_dict().items()}

    def random(i: int, shape):
        def load():
            g = torch.Generator().manual_seed(i)
            return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)

        return load

    state = {
        k: LazyTensor(s, torch.bfloat16, random(i, s)) for i, (k, s) in enumerate(shapes.items())
    }
    save_model(path, config, state)
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=tempfile.gettempdir())
    p.add_argument("--keep", action="store_true", help="keep the synthetic files")
    p.add_argument("--write-synthetic", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write_synthetic:
        write_synthetic(Path(args.write_synthetic))
        return 0
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp = Path(tempfile.mkdtemp(prefix="olmo-flex-bench-prune-", dir=args.workdir))
        try:
            return run(tmp)
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path) -> int:
    from olmo_flex_ext.checkpoint import iter_tensors, read_model_config
    from olmo_flex_ext.prune.scores import ImportanceScores, checkpoint_fingerprint

    py = sys.executable
    src, out, scores_path = tmp / "src", tmp / "pruned", tmp / "scores.safetensors"
    code, write_rss, secs = run_measured([py, __file__, "--write-synthetic", str(src)])
    if code != 0:
        print("writing the synthetic checkpoint failed")
        return 1
    size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    params = read_model_config(src).num_params
    print(
        f"synthetic checkpoint: {params / 1e9:.2f}B params, {size / 1e9:.2f} GB on disk, written "
        f"by save_model + LazyTensor in {secs:.0f} s with peak RSS {write_rss / 1e9:.2f} GB"
    )
    g = torch.Generator().manual_seed(0)
    ImportanceScores(
        [[torch.rand(8192, generator=g), torch.rand(8192, generator=g)] for _ in range(14)],
        {"model_fingerprint": checkpoint_fingerprint(src), "method": "synthetic"},
    ).save(scores_path)

    code, base_rss, _ = run_measured(
        [py, "-c", "import olmo_flex_ext.prune.slicing, olmo_flex_ext.cli"]
    )
    assert code == 0
    cmd = [
        py,
        "-m",
        "olmo_flex_ext.cli",
        "prune",
        str(src),
        "--scores",
        str(scores_path),
        "--widths",
        "8192,4096",
        "--out",
        str(out),
    ]
    code, peak, secs = run_measured(cmd)
    if code != 0:
        print(f"prune failed with exit status {code}")
        return 1
    name = "blocks.0.feed_forward_moe.experts.mlp.w1"
    ((_, a),) = iter_tensors(src, [name])
    ((_, b),) = iter_tensors(out, [name])
    assert b.shape == (8192 + 4096, 2048) and torch.equal(a[:8192], b[:8192])
    ok = peak <= TARGET_BYTES
    print(
        f"olmo-flex prune 8192,8192 -> 8192,4096: {secs:.0f} s, peak RSS {peak / 1e9:.2f} GB "
        f"= {peak / size:.2f} x the checkpoint size (a process importing the same modules: "
        f"{base_rss / 1e9:.2f} GB); target <= {TARGET_BYTES / 1e9:.2f} GB: {'ok' if ok else 'ABOVE'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
