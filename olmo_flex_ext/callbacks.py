"""Callbacks shared by every training run of this project."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any, Dict, Optional

from olmo_core.distributed.utils import get_rank
from olmo_core.train.callbacks import WandBCallback

__all__ = ["FlexWandBCallback"]

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
