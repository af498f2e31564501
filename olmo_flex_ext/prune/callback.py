"""The pruning callback: a train config for a pruned width starts from the pruned teacher.

On a fresh run (global step 0, no checkpoint loaded) :class:`PruneCallback`:

1. loads importance scores (``scores``, or ``<prune_dir>/importance.safetensors`` from an earlier
   attempt) or computes them on the teacher checkpoint with the calibration data, every rank
   scoring its share (resumable; saved into the run folder);
2. keeps each expert's top neurons for the widths of the student model in the config (the widths
   in the config are the source of truth; with ``budget_width`` they must equal the importance
   allocation, which the train config computes from the same scores when it is built);
3. writes the pruned teacher as ``<prune_dir>/start`` (a model-only checkpoint, streamed on rank 0)
   and loads it into the student, FSDP-sharded or not, before the first step;
4. records the widths, the share of importance kept and, with ``compare_calibration``, the overlap of
   the kept neurons with those a second calibration set would keep (W&B and other loggers).

On a resumed run it does nothing (its state says it has pruned, and the trainer resumes the
checkpoint). A fresh run whose initial weights came from ``load_path`` is not pruned either.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

import torch
from olmo_core.distributed.utils import barrier, broadcast_object, get_rank
from olmo_core.train.callbacks import Callback

from ..atomic import write_atomic
from ..errors import UserError
from .allocate import (
    allocate_for_budget,
    check_widths,
    keep_indices,
    kept_fraction,
)
from .scores import ImportanceScores, topk_overlap

__all__ = ["PruneCallback"]

log = logging.getLogger(__name__)

SCORES_FILE = "importance.safetensors"
COMPARE_SCORES_FILE = "importance_compare.safetensors"
START_DIR = "start"


@dataclass
class PruneCallback(Callback):
    """Prune the teacher into the student before step 1 of a fresh run (see module docstring)."""

    # After W&B (3) has started its run, before the checkpointer (1) saves the pre-train
    # checkpoint, so that step0/ already holds the pruned weights and this callback's state.
    priority: ClassVar[int] = 2

    teacher: Optional[str] = None
    """Teacher checkpoint: model-only, trainer ``stepN/``, or a run folder (latest step)."""
    calibration: Optional[List[str]] = None
    """Token file globs of the calibration data."""
    seq_len: int = 4096
    num_seqs: int = 1024
    batch_size: int = 1
    """Sequences per forward pass on each rank."""
    token_dtype: Optional[str] = None
    """``uint16``/``uint32``; default from the vocabulary size."""
    method: str = "minitron"
    scores: Optional[str] = None
    """Precomputed scores of the teacher; default: computed into the run folder."""
    compare_calibration: Optional[List[str]] = None
    """A second calibration set (e.g. general text) whose top neurons are compared with the kept ones."""
    compare_num_seqs: Optional[int] = None
    budget_width: Optional[int] = None
    """Widths allocated by importance at the neuron count of this uniform width (see allocate)."""
    budget_experts: Optional[List[int]] = None
    multiple: int = 128
    min_width: Optional[int] = None
    normalize: str = "layer"
    prune_public: bool = False
    teacher_dtype: Optional[str] = None
    """``float32``/``bfloat16`` for scoring; default bfloat16 on CUDA, float32 on CPU."""
    prune_dir: Optional[str] = None
    """Where scores and the pruned start go (shared by all ranks); default ``<save_folder>/prune``."""
    enabled: bool = True
    pruned: bool = False
    """State: set once the student holds the pruned weights (saved in checkpoints)."""

    # ---- trainer hooks -------------------------------------------------------------------------

    def pre_train(self) -> None:
        if not self.enabled:
            return
        if self.pruned or self.trainer.global_step > 0:
            log.info("Pruning callback: resumed run, nothing to prune")
            return
        if self.trainer.checkpoint_loaded:
            log.info("Pruning callback: initial weights came from a checkpoint, not pruning")
            return
        self.prune_student()

    def state_dict(self) -> Dict[str, Any]:
        return {"pruned": self.pruned}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.pruned = bool(state_dict.get("pruned", self.pruned))

    # ---- the work ------------------------------------------------------------------------------

    def allocation(self, scores: ImportanceScores) -> List[List[int]]:
        """Widths per layer from ``scores`` under this callback's budget settings."""
        if self.budget_width is None:
            raise UserError("allocation needs budget_width")
        return allocate_for_budget(
            scores,
            budget_width=self.budget_width,
            experts=self.budget_experts,
            multiple=self.multiple,
            min_width=self.min_width,
            normalize=self.normalize,
        )

    def prune_student(self) -> None:
        from ..checkpoint import load_state_dict, read_model_config, resolve_checkpoint
        from ..models import expert_widths_per_layer
        from .importance import expert_mlps

        student = self.trainer.train_module.model
        if not self.teacher:
            raise UserError(
                "the pruning callback needs a teacher checkpoint: set "
                "--trainer.callbacks.prune.teacher=PATH"
            )
        teacher = resolve_checkpoint(self.teacher)
        teacher_widths = expert_widths_per_layer(read_model_config(teacher))
        widths = [list(m.expert_widths) for m in expert_mlps(student)]
        self._check_structure(teacher, student)
        check_widths(teacher_widths, widths, prune_public=self.prune_public)

        scores = self._teacher_scores(teacher, teacher_widths)
        if self.budget_width is not None:
            expected = self.allocation(scores)
            if expected != widths:
                raise UserError(
                    "this config allocates widths from importance, but the student was built "
                    f"without them; the scores are at {self.scores_path}: launch again (with "
                    f"OLMO_FLEX_SCORES={self.scores_path} if the run folder is not the default) "
                    "so the config reads its widths from them"
                )
        keep = keep_indices(scores, widths)
        start = self.dir / START_DIR
        error = None
        if get_rank() == 0:
            try:
                self._write_start(teacher, start, keep, scores)
            except Exception as e:  # tell the other ranks instead of leaving them at a barrier
                error = f"{type(e).__name__}: {e}"
                log.exception("Pruning callback: writing %s failed", start)
        error = broadcast_object(error)
        if error is not None:
            raise RuntimeError(
                f"writing the pruned start checkpoint {start} failed on rank 0: {error}"
            )
        load_state_dict(student, start)
        barrier()
        self.pruned = True
        self._record(scores, teacher_widths, widths, teacher)
        log.info("Pruning callback: student starts from %s", start)

    @property
    def dir(self) -> Path:
        if self.prune_dir:
            return Path(self.prune_dir)
        folder = str(self.trainer.save_folder)
        if "://" in folder:
            raise UserError(
                f"save folder {folder} is remote; set --trainer.callbacks.prune.prune_dir to a "
                "directory all ranks share"
            )
        return Path(folder) / "prune"

    @property
    def scores_path(self) -> Path:
        return Path(self.scores) if self.scores else self.dir / SCORES_FILE

    def _check_structure(self, teacher: Path, student: torch.nn.Module) -> None:
        from ..checkpoint import tensor_shapes
        from .slicing import expert_weight_layer

        found = tensor_shapes(teacher)
        for name, tensor in student.state_dict().items():
            if expert_weight_layer(name) is not None:
                continue
            if found.get(name) != tuple(tensor.shape):
                raise UserError(
                    f"the teacher {teacher} does not match the student outside the experts "
                    f"({name}: teacher {found.get(name)}, student {tuple(tensor.shape)}); the "
                    "student must be the teacher's architecture with narrower experts"
                )

    def _teacher_scores(self, teacher: Path, teacher_widths: List[List[int]]) -> ImportanceScores:
        from .scores import checkpoint_fingerprint

        fingerprint = checkpoint_fingerprint(teacher)
        path = self.scores_path
        if self.scores and not path.is_file():
            raise UserError(
                f"scores file {path} (trainer.callbacks.prune.scores) does not exist; unset it to "
                "compute the scores in the run folder"
            )
        if not path.is_file():
            self._compute(teacher, self.calibration, self.num_seqs, path)
        scores = ImportanceScores.load(path)
        scores.check_model(teacher_widths, fingerprint, what=f"the teacher {teacher}")
        if self.compare_calibration and not (self.dir / COMPARE_SCORES_FILE).is_file():
            self._compute(
                teacher,
                self.compare_calibration,
                self.compare_num_seqs or self.num_seqs,
                self.dir / COMPARE_SCORES_FILE,
            )
        return scores

    def _compute(self, teacher: Path, data: Optional[List[str]], num_seqs: int, out: Path) -> None:
        from .importance import checkpoint_importance

        if not data:
            raise UserError(
                "the pruning callback needs calibration data to compute importance: set "
                "--trainer.callbacks.prune.calibration='[/path/*.npy]' (or give scores=PATH)"
            )
        device = self.trainer.device
        dtype = self.teacher_dtype or ("bfloat16" if device.type == "cuda" else "float32")
        log.info("Pruning callback: scoring the teacher %s on %s", teacher, data)
        self.dir.mkdir(parents=True, exist_ok=True)
        scores = checkpoint_importance(
            teacher,
            data,
            seq_len=self.seq_len,
            num_seqs=num_seqs,
            method=self.method,
            batch_size=self.batch_size,
            token_dtype=self.token_dtype,
            device=device,
            dtype=getattr(torch, dtype),
            state_path=self.dir / f".{out.name}.partial.pt",
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if get_rank() == 0:
            scores.save(out)
        barrier()

    def _write_start(self, teacher: Path, start: Path, keep, scores: ImportanceScores) -> None:
        from ..checkpoint import read_config
        from .slicing import prune_checkpoint, pruned_widths

        info = {
            "pruned_from": str(teacher),
            "scores": str(self.scores_path),
            "scores_fingerprint": scores.fingerprint,
            "method": scores.metadata.get("method"),
            "calibration": scores.metadata.get("calibration"),
            "expert_widths": pruned_widths(keep),
        }
        if start.exists():
            try:
                if read_config(start).get("olmo_flex") == info:
                    return  # an earlier attempt of this run already wrote it
            except UserError:
                pass
        prune_checkpoint(teacher, start, keep, overwrite=True, info=info)

    def _record(self, scores, teacher_widths, widths, teacher: Path) -> None:
        compare = None
        if (self.dir / COMPARE_SCORES_FILE).is_file():
            compare = ImportanceScores.load(self.dir / COMPARE_SCORES_FILE)
        rows, kept_all, overlap_all = [], [], []
        for i, (orig, new) in enumerate(zip(teacher_widths, widths)):
            for e, (o, w) in enumerate(zip(orig, new)):
                self.trainer.record_metric(f"prune/width/layer{i}/expert{e}", float(w))
                if w == o:
                    continue
                kept = kept_fraction(scores.scores[i][e], w)
                kept_all.append(kept)
                self.trainer.record_metric(f"prune/kept_importance/layer{i}/expert{e}", kept)
                row = {"layer": i, "expert": e, "width": w, "of": o, "kept_importance": kept}
                if compare is not None:
                    ov = topk_overlap(scores.scores[i][e], compare.scores[i][e], w)
                    overlap_all.append(ov)
                    row["calibration_overlap"] = ov
                    self.trainer.record_metric(f"prune/calibration_overlap/layer{i}/expert{e}", ov)
                rows.append(row)
        if kept_all:
            self.trainer.record_metric("prune/kept_importance_mean", sum(kept_all) / len(kept_all))
        if overlap_all:
            self.trainer.record_metric(
                "prune/calibration_overlap_mean", sum(overlap_all) / len(overlap_all)
            )
        if get_rank() == 0:
            write_atomic(self.dir / "allocation.json", json.dumps(rows, indent=1))
            for r in rows:
                log.info("pruned %s", r)
