"""Flex-math-2x7B-1T with the math expert's width chosen per layer by importance, at the parameter
count of the 5504 model (32 x 5504 math-expert neurons), then distilled like flex_math_5504.py.

The widths come from the teacher's importance scores, read when the config is built: from
``$OLMO_FLEX_SCORES``, else ``runs/flex_math_budget/prune/importance.safetensors``. Either compute
them first:

    olmo-flex importance /data/olmo-flex/checkpoints/Flex-math-2x7B-1T \
        --data '/data/olmo-flex/dolmino-math/*.npy' --seq-len 4096 --num-seqs 1024 \
        --out runs/flex_math_budget/prune/importance.safetensors
    torchrun --nproc-per-node=8 -m olmo_flex_ext.launch train_configs/flex_math_budget.py

or just launch: without scores the first launch computes them into the run folder and stops,
asking to launch again (the model can only be built once its widths are known).
"""

import logging
import os

from olmo_flex_ext.models import with_expert_widths
from olmo_flex_ext.prune.callback import flex_math_prune_callback
from olmo_flex_ext.prune.scores import ImportanceScores
from olmo_flex_ext.recipes import flex_math_7b

log = logging.getLogger(__name__)

BUDGET_WIDTH = 5504
RUN = "runs/flex_math_budget"


def build_config():
    config = flex_math_7b(BUDGET_WIDTH)  # uniform widths until the scores are known
    config.load_path = None  # the pruning callback makes the initial weights
    config.trainer.save_folder = RUN
    config.dataset.work_dir = f"{RUN}/dataset-cache"
    config.trainer.callbacks["wandb"].name = "flex-math-budget"
    prune = flex_math_prune_callback(budget_width=BUDGET_WIDTH)
    scores = os.environ.get("OLMO_FLEX_SCORES", f"{RUN}/prune/importance.safetensors")
    if os.path.isfile(scores):
        prune.scores = scores
        config.model = with_expert_widths(config.model, prune.allocation(ImportanceScores.load(scores)))
    else:
        log.warning(
            "No importance scores at %s yet: the widths shown are a uniform placeholder; the "
            "first launch computes the scores and asks to launch again", scores,
        )
    config.trainer.callbacks["prune"] = prune
    return config
