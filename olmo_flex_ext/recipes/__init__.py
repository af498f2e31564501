"""Recipes: functions that assemble an experiment, or a callback, for a run. Train configs, the
CLI and the demo use them; the library below never imports them.

- :mod:`.experiments`: :func:`flex_experiment` (model + data + AdamW + run folder + W&B),
  :func:`tiny_experiment` and :func:`tiny_data` for the CPU configs;
- :mod:`.transforms`: experiment transforms that return changed copies
  (:func:`with_distillation`, :func:`with_expert_training`, :func:`with_router_training`);
- :mod:`.flex_expert`: a new 7B domain expert trained apart (:func:`flex_expert_7b`);
- :mod:`.flex_math`: the 7B recipes (:func:`flex_math_7b`, :func:`flex_math_budget_7b`,
  :func:`flex_math_prune_callback`, :func:`router_experiment`).
"""

from .experiments import (
    BF16,
    DATA_ROOT_ENV,
    TINY_SEQ,
    TINY_TOKENIZER,
    data_root,
    flex_experiment,
    fsdp,
    tiny_data,
    tiny_experiment,
)
from .flex_expert import flex_expert_7b
from .flex_math import (
    FLEX_7B_AC,
    flex_math_7b,
    flex_math_budget_7b,
    flex_math_prune_callback,
    router_experiment,
)
from .transforms import with_distillation, with_expert_training, with_router_training

__all__ = [
    "BF16",
    "DATA_ROOT_ENV",
    "FLEX_7B_AC",
    "TINY_SEQ",
    "TINY_TOKENIZER",
    "data_root",
    "flex_experiment",
    "flex_expert_7b",
    "flex_math_7b",
    "flex_math_budget_7b",
    "flex_math_prune_callback",
    "fsdp",
    "router_experiment",
    "tiny_data",
    "tiny_experiment",
    "with_distillation",
    "with_expert_training",
    "with_router_training",
]
