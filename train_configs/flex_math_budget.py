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

from olmo_flex_ext.recipes import flex_math_budget_7b


def build_config():
    return flex_math_budget_7b(5504)
