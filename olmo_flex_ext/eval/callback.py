"""In-loop evaluation for training runs: OLMo-core callbacks.

:class:`FlexEvalCallback` evaluates the model being trained every ``eval_interval`` steps (and at
the end) on held-out token files (loss per token), and records the numbers with
``trainer.record_metric`` under ``eval/...``, so they reach the console, W&B and every other
metric sink like the training loss does (the run folder's ``metrics.jsonl`` too:
:class:`olmo_flex_ext.train.callbacks.MetricsLogCallback`). Subclasses add metrics by extending
:meth:`FlexEvalCallback.evaluate` (the demo adds held-out math problems).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from olmo_core.train.callbacks import Callback

__all__ = ["FlexEvalCallback"]

log = logging.getLogger(__name__)


@dataclass
class FlexEvalCallback(Callback):
    """Held-out evaluation during training (see the module docstring). Every rank evaluates the
    same examples (the sets are small), so sharded models see the same forward passes on every
    rank."""

    general_data: Optional[str] = None
    """Glob of held-out general token files."""
    seq_len: int = 128
    max_windows: Optional[int] = 64
    batch_size: int = 64
    eval_interval: Optional[int] = None
    eval_on_finish: bool = True
    enabled: bool = True

    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        """The metrics for ``model`` (names without the ``eval/`` prefix)."""
        from .lm import token_file_loss

        metrics: Dict[str, float] = {}
        if self.general_data:
            metrics["general/loss"] = token_file_loss(
                model,
                self.general_data,
                seq_len=self.seq_len,
                vocab_size=int(self.trainer.train_module.model.vocab_size),
                max_windows=self.max_windows,
                batch_size=max(1, self.batch_size // 8),
            )
        return metrics

    def _run(self) -> None:
        metrics = self.evaluate(self.trainer.train_module.model)
        for name, value in metrics.items():
            self.trainer.record_metric(f"eval/{name}", torch.tensor(value))
        log.info("eval at step %d: %s", self.step, {k: round(v, 4) for k, v in metrics.items()})

    def post_step(self) -> None:
        if self.enabled and self.eval_interval and self.step % self.eval_interval == 0:
            self._run()

    def post_train(self) -> None:
        if (
            self.enabled
            and self.eval_on_finish
            and not (self.eval_interval and self.step % self.eval_interval == 0)
        ):
            self._run()
