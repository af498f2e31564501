"""Peak memory of ``import_hf`` (and ``export_hf``) on a synthetic ~2B-parameter FlexOlmo checkpoint.

    python bench/hf_import.py [--workdir /tmp] [--no-export]

Writes a bf16 FlexOlmo checkpoint (about 4 GB in ~1 GB shards, tensor by tensor so the writer
itself stays small), converts it in a child process and reports the child's peak RSS
(its VmHWM) against the goal of 1.5x the largest shard + 1 GB, next to the RSS of a child
that only imports the package (the interpreter's own share). Takes the shared big-memory lock
(/tmp/olmo-flex-bigmem.lock) while it runs and deletes every file it wrote.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from olmo_flex_ext.checkpoint import LazyTensor, tensor_meta  # noqa: E402
from olmo_flex_ext.hf.files import write_sharded  # noqa: E402

SHAPE = dict(d_model=2048, n_layers=16, n_heads=16, vocab=50304, experts=2, width=8192)
SHARD_BYTES = 10**9
GB = 10**9


def synthetic_items(seed: int = 0) -> List[Tuple[str, LazyTensor]]:
    """HF FlexOlmo tensor names with random bf16 data made on demand."""
    d, w, v = SHAPE["d_model"], SHAPE["width"], SHAPE["vocab"]

    def rand(shape, i):
        def load():
            g = torch.Generator().manual_seed(seed * 100_003 + i)
            return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)

        return LazyTensor(shape, torch.bfloat16, load)

    def ones(shape):
        return LazyTensor(shape, torch.bfloat16, lambda: torch.ones(shape, dtype=torch.bfloat16))

    items = [("model.embed_tokens.weight", (v, d))]
    for i in range(SHAPE["n_layers"]):
        p = f"model.layers.{i}."
        items += [
            (p + f"self_attn.{n}.weight", (d, d)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")
        ]
        items += [(p + f"self_attn.{n}.weight", (d,)) for n in ("q_norm", "k_norm")]
        items += [
            (p + n, (d,))
            for n in ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")
        ]
        items.append((p + "mlp.gate.weight", (SHAPE["experts"], d)))
        for e in range(SHAPE["experts"]):
            q = p + f"mlp.experts.{e}."
            items += [
                (q + "gate_proj.weight", (w, d)),
                (q + "up_proj.weight", (w, d)),
                (q + "down_proj.weight", (d, w)),
            ]
    items += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    return [(n, ones(s) if "norm" in n else rand(s, i)) for i, (n, s) in enumerate(items)]


def write_hf(out: Path) -> int:
    """Write the synthetic checkpoint; returns its parameter count."""
    from transformers import FlexOlmoConfig

    out.mkdir(parents=True)
    items = synthetic_items()
    write_sharded(out, items, max_shard_bytes=SHARD_BYTES)
    FlexOlmoConfig(
        vocab_size=SHAPE["vocab"],
        hidden_size=SHAPE["d_model"],
        intermediate_size=SHAPE["width"],
        num_hidden_layers=SHAPE["n_layers"],
        num_attention_heads=SHAPE["n_heads"],
        num_experts=SHAPE["experts"],
        num_experts_per_tok=SHAPE["experts"],
        pad_token_id=1,
        eos_token_id=0,
        dtype="bfloat16",
    ).save_pretrained(str(out))
    n = 0
    for _, t in items:
        k = 1
        for s in t.shape:
            k *= s
        n += k
    return n


def check(hf: Path, ours: Path, params: int) -> None:
    """The import holds every parameter, and an expert tensor equals the HF experts stacked."""
    from safetensors import safe_open

    from olmo_flex_ext.checkpoint import lazy_state

    assert sum(torch.Size(s).numel() for s, _ in tensor_meta(ours).values()) == params
    index = json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"]
    parts = []
    for e in range(SHAPE["experts"]):
        key = f"model.layers.3.mlp.experts.{e}.down_proj.weight"
        with safe_open(str(hf / index[key]), framework="pt") as f:
            parts.append(f.get_tensor(key).t())
    w2 = lazy_state(ours)["blocks.3.feed_forward_moe.experts.mlp.w2"].load()
    assert torch.equal(w2, torch.cat(parts)), "imported expert weights differ from the HF ones"


_REPORT_PEAK = (
    "\nimport re\n"
    "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))"
)


def run_child(code: str) -> Tuple[float, float]:
    """Run ``code`` in a fresh Python; returns (its peak RSS in bytes, seconds). The peak is the
    child's own VmHWM: rusage's ru_maxrss would include the parent's RSS copied at fork."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code + _REPORT_PEAK], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"child failed: {code}\n{result.stderr[-3000:]}")
    peak_kib = int(result.stdout.split("VmHWM")[-1].split()[0])
    return peak_kib * 1024.0, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--no-export", action="store_true", help="measure import only")
    args = parser.parse_args()
    lock = open("/tmp/olmo-flex-bigmem.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # several GB of RSS: one such job at a time on the machine
    work = Path(tempfile.mkdtemp(prefix="olmo-flex-bench-hf-", dir=args.workdir))
    try:
        hf, ours, back = work / "hf", work / "ours", work / "back"
        t = time.perf_counter()
        params = write_hf(hf)
        shards = sorted(hf.glob("*.safetensors"))
        largest = max(f.stat().st_size for f in shards)
        total = sum(f.stat().st_size for f in shards)
        print(
            f"synthetic FlexOlmo: {params / 1e9:.2f}B params, {total / GB:.2f} GB bf16 in "
            f"{len(shards)} shards (largest {largest / GB:.2f} GB), written in "
            f"{time.perf_counter() - t:.0f} s"
        )

        base_rss, _ = run_child("import olmo_flex_ext.hf, transformers, torch")
        rss, seconds = run_child(
            f"from olmo_flex_ext.hf import import_hf; import_hf({str(hf)!r}, {str(ours)!r})"
        )
        check(hf, ours, params)
        goal = 1.5 * largest + GB
        results = {
            "params": params,
            "largest_shard_gb": largest / GB,
            "baseline_rss_gb": base_rss / GB,
            "import_peak_rss_gb": rss / GB,
            "import_goal_gb": goal / GB,
            "import_rss_over_goal": rss / goal,
            "import_rss_over_largest_shard": rss / largest,
            "import_seconds": seconds,
            "import_gb_per_s": total / GB / seconds,
        }
        if not args.no_export:
            rss, seconds = run_child(
                f"from olmo_flex_ext.hf import export_hf; export_hf({str(ours)!r}, {str(back)!r}, max_shard_bytes={SHARD_BYTES})"
            )
            results.update(
                export_peak_rss_gb=rss / GB, export_rss_over_goal=rss / goal, export_seconds=seconds
            )
        print(json.dumps(results, indent=2))
        print(
            f"import peak RSS {results['import_peak_rss_gb']:.2f} GB = "
            f"{results['import_rss_over_goal']:.2f}x the goal (1.5 x largest shard + 1 GB = "
            f"{goal / GB:.2f} GB); interpreter alone {base_rss / GB:.2f} GB"
        )
        return 0 if results["import_rss_over_goal"] <= 1.0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
