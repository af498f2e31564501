"""Peak memory of ``olmo-flex merge`` on synthetic experts, against the size of the checkpoints.

Writes three 2-expert checkpoints (public width 4096, domain widths 4096 / 2048 / 1024, d_model
1024, 8 layers, vocab 32000: ~1.2 GB each in float32) with identical shared weights, then merges
them in a fresh process and reports its peak RSS next to the input and output sizes. The
checkpoints are themselves written streaming, one generated tensor at a time.

    PYTHONPATH=. python bench/merge_memory.py [--dir /tmp/merge-bench] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

from olmo_flex_ext.checkpoint import LazyTensor, save_model
from olmo_flex_ext.models import flex_olmo

PUBLIC, DOMAINS = 4096, [4096, 2048, 1024]
SHAPE = dict(d_model=1024, n_layers=8, n_heads=8, vocab_size=32000)


def _random(name: str, shape, salt: int = 0):
    def load():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + salt)
        return torch.randn(shape, generator=g) * 0.02

    return LazyTensor(tuple(shape), torch.float32, load)


def write_expert(path: Path, domain: int, salt: int) -> None:
    config = flex_olmo(**SHAPE, expert_widths=[PUBLIC, domain])
    state = {}
    for name, t in config.build(init_device="meta").state_dict().items():
        if ".experts.mlp." in name:  # public rows shared, domain rows own
            pub = _random(name, (PUBLIC, t.shape[1]))
            dom = _random(name, (domain, t.shape[1]), salt)
            state[name] = LazyTensor(
                tuple(t.shape), torch.float32, lambda p=pub, d=dom: torch.cat([p.load(), d.load()])
            )
        elif name.endswith("router.weight"):
            pub = _random(name, (1, SHAPE["d_model"]))
            dom = _random(name, (1, SHAPE["d_model"]), salt)
            state[name] = LazyTensor(
                tuple(t.shape),
                torch.float32,
                lambda p=pub, d=dom: torch.cat([p.load(), d.load()]).reshape(-1),
            )
        else:
            state[name] = _random(name, tuple(t.shape))
    save_model(path, config, state)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/merge-bench")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    inputs = []
    for k, w in enumerate(DOMAINS):
        inputs.append(root / f"expert{k}")
        write_expert(inputs[-1], w, salt=1000 + k)
    # VmHWM (peak RSS of this process image); ru_maxrss would carry over the parent's peak on Linux.
    hwm = "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    code = (
        "import sys; from olmo_flex_ext.compose import merge_experts; "
        f"merge_experts(sys.argv[1:-1], sys.argv[-1], top_k=2, progress=False); {hwm}"
    )
    base = subprocess.run(
        [sys.executable, "-c", f"import olmo_flex_ext.compose.merge; {hwm}"],
        capture_output=True,
        text=True,
        check=True,
    )
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, inputs), str(root / "merged")],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - t
    peak = int(done.stdout.split()[-1]) * 1024
    idle = int(base.stdout.split()[-1]) * 1024
    gb = 1e9
    print(
        f"inputs: {len(inputs)} x ~{size(inputs[0]) / gb:.2f} GB = {sum(map(size, inputs)) / gb:.2f} GB; merged {size(root / 'merged') / gb:.2f} GB"
    )
    print(
        f"merge: {seconds:.1f} s, peak RSS {peak / gb:.2f} GB (python + torch + OLMo-core imported: {idle / gb:.2f} GB)"
    )
    print(
        f"peak RSS / merged size: {peak / size(root / 'merged'):.2f}x; above the imports: {(peak - idle) / gb:.2f} GB"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
