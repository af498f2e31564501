"""One training step of an experiment on fake tensors, with a fake process group of N ranks.

:func:`simulate` builds the experiment's real pieces (the model, with the frozen experts split off
in expert-only training; OLMo-core's train module with its loss, FSDP2, activation checkpointing
and optimizer; the online teacher or the pruning callback's teacher) under PyTorch's
``FakeTensorMode`` and a ``fake`` process group of ``world_size`` ranks, and runs whole training
steps (forward, loss, backward, optimizer step) as rank 0. Nothing is allocated: fake tensors
carry shapes, dtypes and devices. ``torch.distributed._tools`` trackers (``FSDPMemTracker``, or
``MemTracker`` without FSDP) count the bytes of every tensor storage as it lives and dies, by
category, and torch's FLOP formulas count the matmul and attention FLOPs actually executed.
torchtitan's ``scripts/estimate/estimation.py`` does the same for its models.

A fake tensor has no values, so code that reads one (``.item()``, a branch on ``.any()``) cannot
run. The project's own training code has no such reads (the KD loss has no value-dependent
branch; the routed MoE path takes an assumed routing, see ``VariableMoEMLP.assumed_routing``).
Two places outside it need values and get them here, while the train module is being built:
``DeviceMesh`` turns its rank table into a Python list, so tensor operations inside device-mesh
construction run on real (tiny) tensors; and weight initialisation samples truncated normals by
rejection (``while mask.any()``), which is answered with "no resampling needed" (initial values
do not matter for memory). During the steps any value read is an error naming the operation.

This module is run in a fresh process per simulation (:mod:`olmo_flex_ext.train.plan` does that):
a process group and OLMo-core's world mesh exist once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from olmo_core.config import DType
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import UserError

__all__ = ["simulate", "step_batch", "StepTrainer", "CATEGORIES"]

_SCALAR_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}

CATEGORIES = {
    "parameters (sharded)": ("Sharded Param", "Parameter"),
    "parameters (gathered)": ("Unsharded Param", "All Gather"),
    "gradients": ("Sharded Grad", "Unsharded Grad", "Gradient", "Reduce Scatter"),
    "optimizer state": ("OptState", "Optstate"),
    "activations": ("Activation",),
    "temporaries": ("Temp", "Inputs", "Buffer", "Other"),
}
"""The plan's memory categories and the tracker reference types they sum."""


def _in_device_mesh() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith("device_mesh.py"):
            return True
        frame = frame.f_back
    return False


class _PlanDispatch(TorchDispatchMode):
    """Sits above ``FakeTensorMode``: runs device-mesh bookkeeping on real tensors, answers
    weight initialisation's value reads while ``lenient``, refuses value reads otherwise."""

    def __init__(self):
        super().__init__()
        self.lenient = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        plain = [type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type != "meta"
                 for t in tensors]  # fmt: skip
        if (tensors and all(plain)) or (not tensors and _in_device_mesh()):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if func in _SCALAR_OPS and getattr(args[0], "constant", None) is None:  # fake or DTensor
            if not self.lenient:
                raise UserError(
                    f"the training step reads a tensor value ({func}), which a memory plan on fake "
                    "tensors cannot do; make that code independent of tensor values"
                )
            return False if args[0].dtype == torch.bool else 0
        return func(*args, **kwargs)


class _FlopCount(TorchDispatchMode):
    """FLOPs of the matmuls and attention that run (torch's ``flop_registry`` formulas).

    ``torch.utils.flop_counter.FlopCounterMode`` would do, but its per-module accounting adds
    autograd hooks that keep tensors alive under selective activation checkpointing, which would
    distort the memory measured alongside."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


class StepTrainer:
    """What a train module asks of its trainer during a step: metrics are kept as recorded
    (tensors, not reduced over ranks) in :attr:`metrics`."""

    def __init__(self):
        self.metrics: Dict[str, Any] = {}

    def record_metric(self, name: str, value: Any, *args, namespace: Optional[str] = None,
                      **kwargs) -> None:  # fmt: skip
        del args, kwargs
        self.metrics[f"{namespace}/{name}" if namespace else name] = value

    def record_ce_loss(self, value: Any, *args, **kwargs) -> None:
        self.record_metric("train/CE loss", value)


class _ModulePeaks:
    """The root module's forward and backward peaks over every forward (micro-batch) of the
    steps. The trackers keep one set of module statistics (they refuse a second forward of the
    root), so they are collected and reset before each forward, by a global hook that must be
    registered before the tracker's own."""

    def __init__(self, tracker, model: torch.nn.Module, first: Optional[torch.nn.Module] = None):
        self.tracker, self.model = tracker, model
        self.first = first or model
        """The module that runs first in each micro-batch (an online teacher, or the model)."""
        self.peaks = {"forward": 0, "backward": 0}

    def collect(self) -> None:
        stats = self.tracker.memory_tracking.get(self.model)
        for key, snaps in stats.snapshots.items() if stats else []:
            label = {"PEAK_FW": "forward", "PEAK_BW": "backward"}.get(key.name)
            for snap in snaps if label else []:
                for dev_snap in snap.values():
                    self.peaks[label] = max(self.peaks[label], dev_snap["Total"])

    @contextlib.contextmanager
    def hooked(self):
        def before_forward(module, args):
            del args
            if module is self.first:
                self.collect()
                self.tracker.reset_mod_stats()

        handle = torch.nn.modules.module.register_module_forward_pre_hook(before_forward)
        try:
            yield self
        finally:
            handle.remove()
            self.collect()

    def phase_of(self, peak: int, marks: List[tuple]) -> str:
        """Where ``peak`` was reached; ``marks`` are (phase, running peak at its end) in order."""
        first = next(name for name, running in marks if running >= peak)
        if first != "training step":
            return first
        for label in ("backward", "forward"):
            if self.peaks[label] >= peak:
                return label
        return "loss"


def _running_peak(tracker) -> int:
    return max(
        (s.get("Total", 0) for s in tracker.get_tracker_snapshot("peak").values()), default=0
    )


def _categories(snapshot: Dict[str, int]) -> Dict[str, int]:
    return {name: sum(snapshot.get(k, 0) for k in keys) for name, keys in CATEGORIES.items()}


class _NoHook:
    def remove(self) -> None:
        pass


def _mem_tracker():
    """torch's ``MemTracker`` (no FSDP), which registers a gradient hook on each parameter of
    each module it sees run, and torch refuses that for parameters without gradients (frozen
    weights and expert rows, a teacher): those count as hooked already."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class _Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad and p not in self._param_to_grad_hook_handles:
                    self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return _Tracker()


def _tracker(model: torch.nn.Module, optim: Optional[torch.optim.Optimizer], inputs: Any):
    """A memory tracker for ``model`` (FSDP or not), its optimizer and inputs."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        tracker = FSDPMemTracker(mod=model, optm=optim)
        tracker.track_inputs(inputs)
        return tracker
    tracker = _mem_tracker()
    tracker.track_external(model, *([optim] if optim is not None else []), *inputs)
    return tracker


def step_batch(config, world_size: int) -> Dict[str, Any]:
    """A random batch of one rank's share of a step, shaped like the config's data loader's (with
    the teacher's top-k for a distillation run from a store); fake under ``FakeTensorMode``."""
    from ..distill.train_module import KDTrainModuleConfig

    seq = config.dataset.sequence_length
    rows = config.data_loader.global_batch_size // world_size // seq
    vocab = config.dataset.tokenizer.padded_vocab_size()
    batch: Dict[str, Any] = {"input_ids": torch.randint(0, vocab, (rows, seq))}
    tm = config.train_module
    top_k = _store_top_k(config)
    if top_k is not None and not (isinstance(tm, KDTrainModuleConfig) and tm.online_teacher):
        from ..distill.data import TEACHER_IDS, TEACHER_LOGPROBS

        batch[TEACHER_IDS] = torch.randint(0, vocab, (rows, seq, top_k))
        batch[TEACHER_LOGPROBS] = torch.randn(rows, seq, top_k).log_softmax(-1)
    return batch


def _store_top_k(config) -> Optional[int]:
    """k of the top-k store a distillation run reads (from its metadata, else the configured
    online k), or None for a run without a store."""
    store = getattr(config.dataset, "topk_store", None)
    if store is None:
        return None
    try:
        from ..distill.topk_store import TopKStore

        return TopKStore(store).k
    except Exception:
        return getattr(config.train_module, "teacher_top_k", 128)


def _fake_model(model_config, dtype: torch.dtype):
    """A model of fake ``dtype`` tensors (built on the meta device, where the dtype changes)."""
    with unset_fake_temporarily():
        model = model_config.build(init_device="meta").to(dtype=dtype)
    return model.to_empty(device="cpu").eval().requires_grad_(False)


def _with_teacher(tracker, peak: Dict[str, int], teacher: torch.nn.Module) -> Dict[str, int]:
    """The plan's categories of a ``peak`` snapshot with the teacher's weights (alive throughout)
    as their own category: taken out of whatever category the tracker counted them in (it counts
    a module's weights when the module runs), or added if it never saw them."""
    from torch.distributed._tools.common_utils import get_untyped_storages

    peak = dict(peak)
    weights = 0
    for t in (*teacher.parameters(), *teacher.buffers()):
        for storage in get_untyped_storages(t):
            info, _ = tracker._WINFO.get(storage, (None, None))
            if info is None:
                weights += storage.nbytes()
            else:
                weights += info.mem_consumed
                peak[info.reftype] = peak.get(info.reftype, 0) - info.mem_consumed
    return {"teacher weights": weights, **_categories(peak)}


def _score_teacher(student, teacher_config, prune, dtype: torch.dtype) -> Dict[str, Any]:
    """The pruning callback's first job on a fresh run: the whole teacher on every rank, a
    no-grad forward of ``batch_size`` calibration sequences with the importance probes. The
    teacher's weights (built before tracking, alive throughout) are added to the tracked peak."""
    from ..models import expert_widths_per_layer
    from ..prune.importance import ImportanceAccumulator

    teacher = _fake_model(teacher_config, dtype)
    tracker = _tracker(student, None, ())
    with tracker:
        acc = ImportanceAccumulator(expert_widths_per_layer(teacher_config), seq_len=prune.seq_len,
                                    method=prune.method)  # fmt: skip
        x = torch.randint(0, teacher_config.vocab_size, (prune.batch_size, prune.seq_len))
        with torch.no_grad(), acc.attach(teacher):
            teacher(x)
        del acc, x
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    categories = _with_teacher(tracker, peak, teacher)
    return {"peak": sum(categories.values()), "categories": categories}


def simulate(
    config,
    *,
    world_size: int,
    routing: str = "balanced",
    teacher_model=None,
    steps: int = 2,
) -> Dict[str, Any]:
    """Simulate ``steps`` training steps of ``config`` (an ``ExperimentConfig``) as rank 0 of
    ``world_size`` ranks; see the module docstring. ``teacher_model`` is the model config of the
    online or pruning teacher (needed when the run has one). Returns bytes and FLOPs per rank:
    ``peak``, ``categories`` at the peak, ``phase`` of the peak, ``flops_per_step``,
    ``tokens_per_rank_step``, ``model_flops_per_token``, and ``pruning`` (peak and categories of
    the teacher scoring) for a pruning callback."""
    from ..distill.train_module import KDTrainModuleConfig
    from ..nn.moe import VariableMoEMLP
    from ..prune.callback import PruneCallback
    from .experiment import build_model, check_parallelism

    check_parallelism(config, ranks=world_size)
    if world_size > 1:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    tm_config = config.train_module
    online = isinstance(tm_config, KDTrainModuleConfig) and tm_config.online_teacher
    if online:  # the teacher is attached as a fake model below
        tm_config = dataclasses.replace(tm_config, online_teacher=False)
    prune = next((c for c in config.trainer.callbacks.values()
                  if isinstance(c, PruneCallback) and c.enabled and not config.load_path), None)  # fmt: skip
    model = build_model(config)
    for module in model.modules():
        if isinstance(module, VariableMoEMLP):
            module.assumed_routing = routing

    dispatch = _PlanDispatch()
    with FakeTensorMode(allow_non_fake_inputs=True), dispatch:
        train_module = tm_config.build(model, device=torch.device("cpu"))
        dispatch.lenient = False
        train_module._attach_trainer(StepTrainer())  # type: ignore[arg-type]
        train_module.scheduler = None  # learning rates do not change memory
        model = train_module.model
        result: Dict[str, Any] = {}
        if prune is not None:
            dtype = getattr(torch, prune.teacher_dtype or "bfloat16")
            result["pruning"] = _score_teacher(model, teacher_model, prune, dtype)
        if online:
            dtype = (
                DType(tm_config.teacher_dtype).as_pt() if tm_config.teacher_dtype else torch.float32
            )
            train_module.teacher = _fake_model(teacher_model, dtype)
            train_module.online_teacher, train_module._k = True, tm_config.teacher_top_k
        rank_tokens = config.data_loader.global_batch_size // world_size
        batch = step_batch(config, world_size)
        tracker = _tracker(model, train_module.optim, tuple(batch.values()))
        flops = _FlopCount()
        marks: List[tuple] = []
        module_peaks = _ModulePeaks(tracker, model, train_module.teacher if online else None)
        with module_peaks.hooked(), tracker, flops:
            for _ in range(steps):
                train_module.train_batch(dict(batch))
                marks.append(("training step", _running_peak(tracker)))
                train_module.optim_step()
                train_module.zero_grads()
                marks.append(("optimizer step", _running_peak(tracker)))
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
        phase = module_peaks.phase_of(peak["Total"], marks)
    teacher = train_module.teacher if online else None
    categories = _categories(peak) if teacher is None else _with_teacher(tracker, peak, teacher)
    result.update(
        peak=sum(categories.values()),
        categories=categories,
        phase=phase,
        flops_per_step=flops.total // steps,
        tokens_per_rank_step=rank_tokens,
        model_flops_per_token=train_module.num_flops_per_token(config.dataset.sequence_length),
    )
    return result
