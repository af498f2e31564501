"""Evaluation: math exact-match accuracy and answer loss on held-out problems, held-out text loss,
an in-loop evaluator callback, and the lm-eval harness Math2 protocol for 7B checkpoints.

Names are imported lazily so that ``olmo-flex --help`` does not load torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MathScores": "arithmetic",
    "evaluate_math": "arithmetic",
    "greedy_decode": "arithmetic",
    "next_token_losses": "lm",
    "token_file_loss": "lm",
    "FlexEvalCallback": "callback",
    "MetricsFileCallback": "callback",
    "read_metrics": "callback",
    "run_math2": "harness",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
