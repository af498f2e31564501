"""Evaluation: held-out text loss (:mod:`.lm`), an in-loop evaluator callback (:mod:`.callback`),
and the lm-eval harness Math2 protocol for 7B checkpoints (:mod:`.harness`).

Names are imported lazily so that ``olmo-flex --help`` does not load torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "next_token_losses": "lm",
    "token_file_loss": "lm",
    "FlexEvalCallback": "callback",
    "run_math2": "harness",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
