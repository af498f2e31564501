"""In-loop evaluation for training runs: OLMo-core callbacks.

:class:`FlexEvalCallback` evaluates the model being trained every ``eval_interval`` steps (and at
the end) on held-out math problems (greedy exact-match accuracy, answer loss) and held-out general
text (loss), and records the numbers with ``trainer.record_metric`` under ``eval/...``, so they reach
the console, W&B and every other metric sink like the training loss does (the run folder's
``metrics.jsonl`` too: :class:`olmo_flex_ext.callbacks.MetricsLogCallback`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List, Optional

import torch
from olmo_core.distributed.utils import get_world_size
from olmo_core.train.callbacks import Callback

__all__ = ["FlexEvalCallback"]

log = logging.getLogger(__name__)


@dataclass
class FlexEvalCallback(Callback):
    """Math and general held-out evaluation during training (see the module docstring).

    Every rank evaluates the same examples (the sets are small), and greedy decoding runs a fixed
    number of steps when there are several ranks, so sharded models see the same forward passes
    on every rank.
    """

    tokenizer: Optional[str] = None
    """HF tokenizer directory (``tokenizer.json``); needed for math problems."""
    math_problems: Optional[str] = None
    """JSONL of held-out problems as the demo data writes them (``math-eval.jsonl``)."""
    general_data: Optional[str] = None
    """Glob of held-out general token files."""
    seq_len: int = 128
    max_problems: Optional[int] = None
    max_windows: Optional[int] = 64
    batch_size: int = 64
    eval_interval: Optional[int] = None
    eval_on_finish: bool = True
    enabled: bool = True

    @cached_property
    def _tok(self) -> Any:
        from ..data.tokenize import load_tokenizer

        assert self.tokenizer is not None, "FlexEvalCallback.tokenizer is needed for math problems"
        return load_tokenizer(self.tokenizer)

    @cached_property
    def _problems(self) -> List[Any]:
        from ..data.demo_data import read_problems

        assert self.math_problems is not None
        problems = read_problems(self.math_problems)
        return problems[: self.max_problems] if self.max_problems else problems

    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        """The metrics for ``model`` (names without the ``eval/`` prefix)."""
        from .arithmetic import evaluate_math
        from .lm import token_file_loss

        metrics: Dict[str, float] = {}
        if self.math_problems:
            tok, special = self._tok
            scores = evaluate_math(
                model,
                self._problems,
                tok,
                eos_id=special.eos,
                batch_size=self.batch_size,
                stop_early=get_world_size() == 1,
            )
            metrics["math/accuracy"] = scores.accuracy
            metrics["math/answer_loss"] = scores.answer_loss
            for level, acc in scores.accuracy_by_level.items():
                metrics[f"math/accuracy_level{level}"] = acc
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
