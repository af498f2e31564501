"""Callbacks shared by every training run of this project."""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from olmo_core.distributed.utils import get_rank
from olmo_core.io import is_url
from olmo_core.train.callbacks import Callback, CheckpointerCallback, WandBCallback

__all__ = ["FlexWandBCallback", "FlexCheckpointerCallback", "MetricsLogCallback", "read_metrics"]

METRICS_LOG = "metrics.jsonl"

log = logging.getLogger(__name__)


@dataclass
class FlexWandBCallback(WandBCallback):
    """OLMo-core's W&B callback, made safe for laptops and resumable runs.

    - With no ``WANDB_API_KEY`` and no ``WANDB_MODE`` it logs offline (``wandb sync`` uploads later)
      instead of failing; in offline mode it never polls the W&B API for cancel tags.
    - A resumed run continues the same W&B run: the run id is kept in the checkpoint.
    - ``finalize`` works with wandb versions whose ``finish()`` has no ``quiet`` argument.
    """

    run_id: Optional[str] = None

    def _offline(self) -> bool:
        return os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")

    def pre_train(self):
        """Mirrors OLMo-core 3.0 ``WandBCallback.pre_train``; changed: offline without an API
        key, and ``wandb.init`` gets the run id kept in the checkpoint (``resume="allow"``)."""
        if not self.enabled or get_rank() != 0:
            return
        if "WANDB_API_KEY" not in os.environ and "WANDB_MODE" not in os.environ:
            log.info("No WANDB_API_KEY: logging to W&B offline (upload later with `wandb sync`)")
            os.environ["WANDB_MODE"] = "offline"
        if self._offline():
            # The parent requires an API key even offline; an offline run never uses it.
            os.environ.setdefault("WANDB_API_KEY", "offline")
            self.cancel_tags = None
        wandb = self.wandb
        self.run_id = self.run_id or secrets.token_hex(4)
        wandb_dir = self.trainer.work_dir / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        wandb.init(
            dir=wandb_dir,
            id=self.run_id,
            resume="allow",
            project=self.project,
            entity=self.entity,
            group=self.group,
            name=self.name,
            tags=self.tags,
            notes=self.notes,
            config=self.config,
        )
        self._run_path = self.run.path  # type: ignore[union-attr]

    def finalize(self, exit_code: int = 0):
        """Mirrors OLMo-core 3.0 ``WandBCallback.finalize``; changed: works with wandb versions
        whose ``finish()`` has no ``quiet`` argument."""
        if self.finalized:
            return
        try:
            self.wandb.finish(exit_code=exit_code, quiet=True)
        except TypeError:  # wandb >= 0.29 dropped `quiet`
            self.wandb.finish(exit_code=exit_code)
        self._finalized = True

    def state_dict(self) -> Dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state_dict: Dict[str, Any]):
        self.run_id = state_dict.get("run_id") or self.run_id


@dataclass
class FlexCheckpointerCallback(CheckpointerCallback):
    """OLMo-core's checkpointer, safe to rerun on a finished run.

    The stock callback forgets, after resuming, that the step it resumed from is already saved; a
    run resumed at its last step (the same command run again after it finished) then tries to
    save that step again at the end of training and fails with ``FileExistsError``.
    """

    def post_checkpoint_loaded(self, path):
        del path
        self._latest_checkpoint_step = self.step


@dataclass
class MetricsLogCallback(Callback):
    """Appends every logged metric to ``metrics.jsonl`` in the run folder (rank 0), one JSON
    object per line: ``{"step": N, "<metric>": value, ...}``; read it with :func:`read_metrics`.

    OLMo-core's ``MetricSaverCallback`` keeps only the latest values (per-step files clash when
    a checkpoint is saved on that step); training curves need every step. A resumed run first
    drops the lines past the step it resumes from, so the file never repeats a step.
    """

    enabled: bool = True

    def _path(self) -> Path:
        folder = self.trainer.save_folder
        return Path(self.trainer.work_dir if is_url(folder) else folder) / METRICS_LOG

    def post_checkpoint_loaded(self, path):
        del path
        file = self._path()
        if not self.enabled or get_rank() != 0 or not file.exists():
            return
        lines = file.read_text().splitlines(keepends=True)
        keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
        if len(keep) != len(lines):
            tmp = file.with_name(f".{file.name}.tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, file)

    def log_metrics(self, step: int, metrics: Dict[str, float]):
        if not self.enabled or get_rank() != 0:
            return
        file = self._path()
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def read_metrics(run_folder: Union[str, Path]) -> Dict[int, Dict[str, float]]:
    """Step -> metrics logged at that step, from a run folder's ``metrics.jsonl``."""
    out: Dict[int, Dict[str, float]] = {}
    for line in (Path(run_folder) / METRICS_LOG).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(int(row.pop("step")), {}).update(row)
    return out
