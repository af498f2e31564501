"""A memory and time plan for a training run, computed on a CPU: will it fit, how long will it take.

:func:`plan_run` simulates whole training steps of a train config with fake tensors and a fake
process group of N ranks (:mod:`olmo_flex_ext.train.fake_step`, each simulation in a fresh
process) and reports, per GPU:

- the peak memory by category (parameters sharded and gathered, gradients, optimizer state,
  activations, temporaries) and the phase where it is reached, and the peak of the pruning
  callback's teacher scoring before step 1 when the config prunes;
- whether that fits the GPU's memory less a headroom (CUDA context, communication buffers,
  allocator fragmentation; 10% by default), and the largest micro-batch that fits (the peak grows
  linearly with the micro-batch: two simulations give the line, a third confirms the answer);
- tokens per step, FLOPs per token (OLMo-core's model count, and the FLOPs the step executes:
  frozen weights get no weight gradient, recomputation and an online teacher are included), and
  the time per step and for the whole run at a stated MFU of a stated GPU's dense peak.

Estimates are of eager execution: with ``compile_model`` the compiled blocks usually need less
activation memory, and ``budget`` activation checkpointing (a compile-time policy) is planned as no
checkpointing, so both are upper bounds. The CPU simulation matches real steps to a few percent
(``tests/test_train_plan.py``); what a GPU adds (context, NCCL, fragmentation) is the headroom.

Command line: ``olmo-flex plan CONFIG.py [--world-size N] [--gpu-memory 80GB] [--json]``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import UserError

__all__ = ["GPU", "GPUS", "Plan", "plan_run", "parse_bytes", "teacher_model_config"]

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float
    """Dense bfloat16 tensor-core peak, FLOP/s."""
    fp32_flops: float
    """Plain float32 peak (OLMo-core does not enable TF32), FLOP/s."""
    memory: int
    """Bytes."""


GPUS: Dict[str, GPU] = {
    "h100": GPU("H100 SXM", 989.4e12, 66.9e12, 80 * 10**9),
    "h200": GPU("H200 SXM", 989.4e12, 66.9e12, 141 * 10**9),
    "a100": GPU("A100 SXM", 312e12, 19.5e12, 80 * 10**9),
    "b200": GPU("B200", 2250e12, 80e12, 180 * 10**9),
}


def parse_bytes(text: str) -> int:
    """``80GB`` (10^9), ``80GiB`` (2^30), ``80G``/``80`` (GB), ``8e10`` (bytes) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.I)
    if not m:
        raise UserError(f"memory size {text!r} is not understood; write e.g. 80GB or 141GiB")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    if not unit:
        return int(value if value > 10**4 else value * 10**9)
    return int(value * (1024 if binary else 1000) ** " KMGT".index(unit))


@dataclass
class Memory:
    peak: int
    categories: Dict[str, int]
    phase: str


@dataclass
class Plan:
    """What :func:`plan_run` found (bytes and FLOPs per GPU)."""

    config: str
    world_size: int
    gpu: str
    capacity: int
    usable: int
    settings: Dict[str, Any]
    step: Memory
    fits: bool
    micro_batch: int
    """Sequences per micro-batch of the simulated step."""
    largest_micro_batch: Optional[int]
    """Largest micro-batch (sequences, dividing the rank's batch) that fits, or None."""
    largest_micro_batch_peak: Optional[int]
    micro_batch_peaks: Dict[int, int]
    """Peak per simulated micro-batch size (sequences)."""
    rank_batch: int
    """Sequences per rank per step."""
    tokens_per_step: int
    model_flops_per_token: float
    executed_flops_per_token: float
    step_seconds: float
    mfu: float
    steps: Optional[int]
    run_gpu_hours: Optional[float]
    pruning: Optional[Memory] = None
    pruning_gpu_hours: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def render(self) -> str:
        unit, size = ("GiB", GIB) if self.step.peak >= GIB else ("MiB", 1024**2)
        gib = lambda b: f"{b / size:.1f}"  # noqa: E731
        s = self.settings
        lines = [
            f"plan: {self.config} on {self.world_size} x {self.gpu} "
            f"({self.capacity / 1e9:.0f} GB, usable {self.usable / GIB:.1f} GiB)",
            f"  {s['parallelism']}; parameters in {s['param_dtype']}, gradients reduced in "
            f"{s['reduce_dtype']}; activation checkpointing: {s['activation_checkpointing']}; "
            f"compile: {s['compile']}",
            f"  micro-batch {self.micro_batch} x {s['sequence_length']} tokens, "
            f"{self.rank_batch // self.micro_batch} per step on each rank",
            f"memory per GPU at the peak ({self.step.phase}), {unit}:",
        ]
        lines += [f"  {name:<24}{gib(b):>8}" for name, b in self.step.categories.items()]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"  {'total':<24}{gib(self.step.peak):>8}   {verdict}")
        if self.pruning is not None:
            fits = "fits" if self.pruning.peak <= self.usable else "DOES NOT FIT"
            lines.append(f"pruning before step 1 (teacher scoring): peak {gib(self.pruning.peak)} "
                         f"{unit}   {fits}")  # fmt: skip
        if not self.micro_batch_peaks:
            lines.append("largest micro-batch that fits: not searched")
        elif self.largest_micro_batch is None:
            lines.append("largest micro-batch that fits: none (not even 1 sequence)")
        else:
            lines.append(f"largest micro-batch that fits: {self.largest_micro_batch} sequences "
                         f"(peak {gib(self.largest_micro_batch_peak or 0)} {unit})")  # fmt: skip
        lines.append(f"tokens per step: {self.tokens_per_step:,d}; FLOPs per token: model "
                     f"{self.model_flops_per_token:.3g}, executed {self.executed_flops_per_token:.3g}")  # fmt: skip
        lines.append(f"time per step: {self.step_seconds:.2f} s at {self.mfu:.0%} MFU")
        if self.steps is not None and self.run_gpu_hours is not None:
            hours = self.run_gpu_hours / self.world_size
            lines.append(f"whole run: {self.steps:,d} steps, {hours:.1f} h, "
                         f"{self.run_gpu_hours:.1f} GPU-hours")  # fmt: skip
        if self.pruning_gpu_hours is not None:
            lines.append(f"pruning (teacher scoring): {self.pruning_gpu_hours:.1f} GPU-hours")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def teacher_model_config(config, name: Optional[str] = None):
    """The model config of the teacher an experiment runs (online teacher, or the pruning
    callback's): the named config, else the one in its checkpoint, else the student with every
    expert as wide as the widest of its layer (the unpruned model), or None without a teacher."""
    from ..checkpoint import read_model_config
    from ..distill.train_module import KDTrainModuleConfig
    from ..models import expert_widths_per_layer, get_model_config, with_expert_widths
    from ..prune.callback import PruneCallback

    tm = config.train_module
    path = tm.teacher_path if isinstance(tm, KDTrainModuleConfig) and tm.online_teacher else None
    for callback in config.trainer.callbacks.values():
        if isinstance(callback, PruneCallback) and callback.enabled and not config.load_path:
            path = path or callback.teacher or "unset"
    if path is None:
        return None
    if name:
        return get_model_config(name)
    try:
        return read_model_config(path)
    except Exception:  # not on this machine: the unpruned student
        widths = expert_widths_per_layer(config.model)
        return with_expert_widths(config.model, [[max(w)] * len(w) for w in widths])


def _simulate(job: Dict[str, Any]) -> Dict[str, Any]:
    """One simulation in a fresh process (see :mod:`~olmo_flex_ext.train.fake_step`)."""
    cmd = [sys.executable, "-m", "olmo_flex_ext.train.plan", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 2 and "error: " in proc.stderr:
        raise UserError(proc.stderr.split("error: ", 1)[1].strip())
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"simulating a step failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _settings(config, world_size: int) -> Dict[str, Any]:
    tm = config.train_module
    dp = tm.dp_config if world_size > 1 else None
    ac = tm.ac_config
    mode = "none" if ac is None else str(ac.mode)
    if ac is not None and ac.modules:
        mode += f" {ac.modules}"
    dtype = lambda d, default: str(d) if d is not None else default  # noqa: E731
    return {
        "parallelism": f"{dp.name} over {world_size} ranks" if dp else "one process",
        "param_dtype": dtype(dp.param_dtype if dp else None, str(config.model.dtype)),
        "reduce_dtype": dtype(dp.reduce_dtype if dp else None, str(config.model.dtype)),
        "activation_checkpointing": mode,
        "compile": bool(tm.compile_model),
        "sequence_length": config.dataset.sequence_length,
    }


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_run(
    config_path: str,
    overrides: Optional[List[str]] = None,
    *,
    world_size: int = 8,
    gpu: str = "h100",
    gpu_memory: Optional[int] = None,
    mfu: float = 0.4,
    headroom: float = 0.1,
    routing: str = "balanced",
    model: Optional[str] = None,
    teacher_model: Optional[str] = None,
    search: bool = True,
) -> Plan:
    """Plan the run of ``config_path`` (with dotted ``overrides``) on ``world_size`` GPUs of the
    kind ``gpu`` (``GPUS``; ``gpu_memory`` bytes overrides its memory). ``model`` names the model
    of a config that takes it from a checkpoint not on this machine (``olmo-flex models``)."""
    from olmo_core.exceptions import OLMoConfigurationError

    from ..models import get_model_config
    from .experiment import check_parallelism, load_experiment

    if world_size < 1:
        raise UserError(f"--world-size {world_size}: give the number of GPUs (1 or more)")
    if gpu not in GPUS:
        raise UserError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if not 0 < mfu <= 1 or not 0 <= headroom < 1:
        raise UserError(f"--mfu {mfu} and --headroom {headroom} must be fractions (e.g. 0.4, 0.1)")
    if routing not in ("balanced", "worst"):
        raise UserError(f"--routing {routing!r}: use balanced or worst")
    overrides = list(overrides or [])
    model_config = get_model_config(model) if model else None
    try:
        config = load_experiment(config_path, overrides, model=model_config)
    except UserError:
        raise
    except OLMoConfigurationError as e:
        if model is None and "takes its model from a checkpoint" in str(e):
            raise UserError(f"{e}, or plan it with --model NAME (see olmo-flex models)") from None
        raise
    check_parallelism(config, ranks=world_size)
    card = GPUS[gpu]
    capacity = gpu_memory or card.memory
    usable = int(capacity * (1 - headroom))
    seq = config.dataset.sequence_length
    rank_batch = config.data_loader.global_batch_size // (world_size * seq)
    micro = config.train_module.rank_microbatch_size // seq
    teacher = teacher_model_config(config, teacher_model)
    job = dict(config=config_path, overrides=overrides, world_size=world_size, routing=routing,
               model=model, teacher=teacher.as_config_dict() if teacher else None)  # fmt: skip

    def run(m: int, with_pruning: bool = False) -> Dict[str, Any]:
        ov = overrides + [f"--train_module.rank_microbatch_size={m * seq}"]
        return _simulate({**job, "overrides": ov, "pruning": with_pruning})

    first = run(micro, with_pruning=True)
    peaks = {micro: first["peak"]}
    largest = None
    if not search:
        peaks = {}
    else:
        options = _divisors(rank_batch)
        other = next((d for d in options if d > micro), None) or next(
            (d for d in reversed(options) if d < micro), None
        )
        if other is not None:
            peaks[other] = run(other)["peak"]
            (m0, p0), (m1, p1) = sorted(peaks.items())
            slope = (p1 - p0) / (m1 - m0)
            guess = [d for d in options if p0 + slope * (d - m0) <= usable]
            for d in reversed(guess):
                if d not in peaks:
                    peaks[d] = run(d)["peak"]
                if peaks[d] <= usable:
                    largest = d
                    break
        elif first["peak"] <= usable:
            largest = micro
        if largest is None and 1 not in peaks and micro != 1:
            peaks[1] = run(1)["peak"]
        if largest is None and peaks.get(1, usable + 1) <= usable:
            largest = 1

    tokens = config.data_loader.global_batch_size
    dtype = _settings(config, world_size)["param_dtype"]
    peak_flops = card.bf16_flops if "bfloat16" in dtype else card.fp32_flops
    executed = first["flops_per_step"] / first["tokens_per_rank_step"]
    step_seconds = first["flops_per_step"] / (peak_flops * mfu)
    steps = _run_steps(config)
    notes = _notes(config, dtype)
    pruning, pruning_hours = None, None
    if "pruning" in first:
        p = first["pruning"]
        pruning = Memory(p["peak"], p["categories"], "teacher scoring")
        pruning_hours = _pruning_gpu_hours(config, teacher, peak_flops * mfu)
    return Plan(
        config=config_path,
        world_size=world_size,
        gpu=card.name,
        capacity=capacity,
        usable=usable,
        settings=_settings(config, world_size),
        step=Memory(first["peak"], first["categories"], first["phase"]),
        fits=first["peak"] <= usable and (pruning is None or pruning.peak <= usable),
        micro_batch=micro,
        largest_micro_batch=largest,
        largest_micro_batch_peak=peaks.get(largest) if largest else None,
        micro_batch_peaks=dict(sorted(peaks.items())),
        rank_batch=rank_batch,
        tokens_per_step=tokens,
        model_flops_per_token=first["model_flops_per_token"],
        executed_flops_per_token=executed,
        step_seconds=step_seconds,
        mfu=mfu,
        steps=steps,
        run_gpu_hours=None if steps is None else steps * step_seconds * world_size / 3600,
        pruning=pruning,
        pruning_gpu_hours=pruning_hours,
        notes=notes,
    )


def _run_steps(config) -> Optional[int]:
    duration = config.trainer.max_duration
    if duration is None:
        return None
    unit, value = str(duration.unit), duration.value
    if unit.endswith("tokens"):
        return math.ceil(value / config.data_loader.global_batch_size)
    if unit.endswith("steps"):
        return int(value)
    return None  # epochs: the data's size decides


def _pruning_gpu_hours(config, teacher, flops_per_second: float) -> Optional[float]:
    from ..prune.callback import PruneCallback

    prune = next(
        (c for c in config.trainer.callbacks.values() if isinstance(c, PruneCallback)), None
    )
    if prune is None or teacher is None:
        return None
    per_token = teacher.build(init_device="meta").num_flops_per_token(prune.seq_len) / 3  # forward
    return prune.num_seqs * prune.seq_len * per_token / flops_per_second / 3600


def _notes(config, dtype: str) -> List[str]:
    tm = config.train_module
    notes = []
    if tm.compile_model:
        notes.append(
            "compile_model: planned as eager execution (compiled blocks usually need less)"
        )
    ac = tm.ac_config
    if ac is not None and str(ac.mode) == "budget":
        notes.append("budget activation checkpointing is a compile-time policy: planned as none")
    if "bfloat16" not in dtype:
        notes.append(f"parameters compute in {dtype}: time uses the GPU's float32 peak")
    return notes


def _worker(job: Dict[str, Any]) -> int:
    """Child process: one simulation, result as one JSON line on stdout."""
    from olmo_core.nn.transformer import TransformerConfig

    from ..errors import user_errors
    from ..models import get_model_config
    from .experiment import load_experiment
    from .fake_step import simulate

    with user_errors():
        model = get_model_config(job["model"]) if job.get("model") else None
        config = load_experiment(job["config"], job["overrides"], model=model)
        if not job.get("pruning"):
            _disable_pruning(config)
        teacher = TransformerConfig.from_dict(job["teacher"]) if job.get("teacher") else None
        result = simulate(config, world_size=job["world_size"], routing=job["routing"],
                          teacher_model=teacher)  # fmt: skip
    print(json.dumps(result))
    return 0


def _disable_pruning(config) -> None:
    from ..prune.callback import PruneCallback

    for callback in config.trainer.callbacks.values():
        if isinstance(callback, PruneCallback):
            callback.enabled = False


if __name__ == "__main__":
    sys.exit(_worker(json.loads(sys.argv[1])))
