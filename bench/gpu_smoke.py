"""What only a GPU can confirm, in under five minutes on one CUDA GPU; prints ratios.

1. A small FlexOlmo (4 layers, d_model 512, experts [1376, 512]) distilled a few steps the way the
   7B configs train: bfloat16 compute (FSDP mixed precision, one rank), float32 gradient
   reduction and optimizer state, compile, selective activation checkpointing, the public expert
   frozen. Prints the losses (finite, falling) and the time per step against eager float32.
2. The variable-width MoE forward+backward (every expert active) against one dense SwiGLU MLP of
   the summed width, bfloat16 (goal <= 1.05).
3. A KD training step (top-128 teacher log-probs) against a CE step of the same model (goal <=
   1.05).
4. The memory plan's predicted peak (``olmo-flex plan``, simulated on the CPU) against
   ``torch.cuda.max_memory_allocated`` over two real steps of the same config on one GPU.

    python bench/gpu_smoke.py            # or python -m bench.gpu_smoke

Without CUDA it says so and exits with status 0 (nothing to check).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

CONFIG = """
from olmo_flex_ext.models import flex_olmo
from olmo_flex_ext.recipes import (TINY_TOKENIZER, flex_experiment, with_distillation,
                                   with_expert_training)
from olmo_core.train import Duration


def build_config():
    model = flex_olmo(d_model=512, n_layers=4, n_heads=8, vocab_size=TINY_TOKENIZER.vocab_size,
                      expert_widths=[1376, 512])
    config = flex_experiment(
        model=model, data_paths=["unused.npy"], tokenizer=TINY_TOKENIZER, save_folder="unused",
        sequence_length=1024, global_batch_tokens=8 * 1024, microbatch_tokens=4 * 1024,
        max_duration=Duration.steps(10), lr=1e-3, wandb_project=None,
    )
    config = with_distillation(config, store="unused-store")
    return with_expert_training(config, experts=[1])
"""


def _cuda_time(fn: Callable[[], object], repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of ``fn`` on the GPU (CUDA events)."""
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _train_module(config, *, fsdp: bool):
    import torch

    from olmo_flex_ext.train.experiment import build_model
    from olmo_flex_ext.train.fake_step import StepTrainer

    if not fsdp:
        config.train_module.dp_config = None
        config.train_module.compile_model = False
        config.train_module.ac_config = None
    tm = config.train_module.build(build_model(config), device=torch.device("cuda"))
    tm._attach_trainer(StepTrainer())
    tm.scheduler = None
    return tm


def _step(tm, batch) -> Callable[[], None]:
    def step():
        tm.train_batch(dict(batch))
        tm.optim_step()
        tm.zero_grads()

    return step


def smoke_training(config_path: str, eager_step: float) -> Dict[str, float]:
    """bf16 + compile + selective AC on one FSDP rank, against an eager float32 step (no FSDP)."""
    import torch
    from olmo_core.train.train_module import TransformerActivationCheckpointingConfig

    from olmo_flex_ext.recipes import BF16
    from olmo_flex_ext.train.experiment import load_experiment
    from olmo_flex_ext.train.fake_step import step_batch

    fast = load_experiment(config_path)
    fast.train_module.dp_config.param_dtype = BF16
    fast.train_module.compile_model = True
    fast.train_module.ac_config = TransformerActivationCheckpointingConfig(mode="selected_ops")
    tm = _train_module(fast, fsdp=True)
    torch.manual_seed(0)
    batch = {k: v.cuda() for k, v in step_batch(fast, 1).items()}
    losses: List[float] = []
    start = time.perf_counter()
    for _ in range(8):
        _step(tm, batch)()
        losses.append(float(tm.trainer.metrics["train/KD loss"]))
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    fast_step = _cuda_time(_step(tm, batch), repeats=5, warmup=1)
    print(f"[1] bf16 + compile + selected_ops AC, one FSDP rank: KD loss over 8 steps "
          f"{[round(x, 4) for x in losses]} (compile included: {first:.1f} s); step "
          f"{fast_step * 1e3:.1f} ms vs eager float32 {eager_step * 1e3:.1f} ms: ratio "
          f"{fast_step / eager_step:.3f}")  # fmt: skip
    ok = all(x == x for x in losses) and losses[-1] < losses[0]
    print(f"    losses finite and falling: {ok}")
    return {"bf16_compile_ac_over_eager_fp32": fast_step / eager_step}


def smoke_moe() -> Dict[str, float]:
    import torch
    from olmo_core.nn.feed_forward import FeedForwardConfig

    from olmo_flex_ext.nn.moe import variable_moe_config

    torch.manual_seed(0)
    widths, d = [11008 // 4, 5504 // 4], 1024
    x = torch.randn(4, 4096, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(x)
    moe = variable_moe_config(widths, 2).build(d, init_device="cuda").to(torch.bfloat16).train()
    dense = FeedForwardConfig(hidden_size=sum(widths), bias=False).build(d, init_device="cuda")
    dense = dense.to(torch.bfloat16)

    def run(m):
        return lambda: m(x).backward(g)

    ratio = _cuda_time(run(moe)) / _cuda_time(run(dense))
    print(f"[2] variable MoE {widths} fwd+bwd / dense SwiGLU {sum(widths)}, bf16: {ratio:.3f} "
          "(goal <= 1.05)")  # fmt: skip
    return {"moe_over_dense": ratio}


def smoke_kd_vs_ce(config_path: str) -> Dict[str, float]:
    from olmo_core.train.train_module import TransformerTrainModuleConfig

    from olmo_flex_ext.train.experiment import load_experiment
    from olmo_flex_ext.train.fake_step import step_batch

    kd_config = load_experiment(config_path)
    kd = _train_module(kd_config, fsdp=False)
    batch = {k: v.cuda() for k, v in step_batch(kd_config, 1).items()}
    ce_config = load_experiment(config_path)
    fields = {
        f: getattr(ce_config.train_module, f)
        for f in TransformerTrainModuleConfig.__dataclass_fields__
    }
    ce_config.train_module = TransformerTrainModuleConfig(**fields)
    ce = _train_module(ce_config, fsdp=False)
    ce_batch = {"input_ids": batch["input_ids"]}
    kd_step = _cuda_time(_step(kd, batch), repeats=5)
    ratio = kd_step / _cuda_time(_step(ce, ce_batch), repeats=5)
    print(f"[3] KD step (top-{batch['teacher_ids'].shape[-1]}) / CE step, eager float32: "
          f"{ratio:.3f} (goal <= 1.05)")  # fmt: skip
    return {"kd_over_ce": ratio, "eager_fp32_kd_step_s": kd_step}


def smoke_plan(config_path: str) -> Dict[str, float]:
    import torch

    from olmo_flex_ext.train.experiment import load_experiment
    from olmo_flex_ext.train.fake_step import step_batch
    from olmo_flex_ext.train.plan import plan_run

    plan = plan_run(config_path, world_size=1, search=False)
    config = load_experiment(config_path)
    tm = _train_module(config, fsdp=False)
    batch = {k: v.cuda() for k, v in step_batch(config, 1).items()}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        _step(tm, batch)()
    torch.cuda.synchronize()
    real = torch.cuda.max_memory_allocated()
    ratio = plan.step.peak / real
    print(f"[4] plan peak {plan.step.peak / 2**20:.1f} MiB / torch.cuda.max_memory_allocated "
          f"{real / 2**20:.1f} MiB over two steps: {ratio:.3f} (CPU simulation vs GPU allocator)")  # fmt: skip
    return {"plan_over_measured_peak": ratio}


def main(argv=None) -> int:
    del argv
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_smoke.py: no CUDA device here; it needs one GPU (nothing was run)")
        return 0
    os.environ.setdefault("OLMO_FLEX_DATA_ROOT", tempfile.mkdtemp(prefix="gpu-smoke-"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as tmp:
        config = str(Path(tmp) / "gpu_smoke_config.py")
        Path(config).write_text(CONFIG)
        start = time.perf_counter()
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
        ratios: Dict[str, float] = {}
        ratios.update(smoke_moe())
        ratios.update(smoke_kd_vs_ce(config))
        ratios.update(smoke_plan(config))
        dist.init_process_group("nccl", rank=0, world_size=1)  # FSDP mixed precision on one rank
        try:
            ratios.update(smoke_training(config, ratios.pop("eager_fp32_kd_step_s")))
        finally:
            dist.destroy_process_group()
        print("ratios:", {k: round(v, 3) for k, v in ratios.items()})
        print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
