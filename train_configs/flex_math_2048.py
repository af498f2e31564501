"""Flex-math-2x7B-1T with the math expert at width 2048 (public expert 11008).

    torchrun --nproc-per-node=8 -m olmo_flex_ext.launch train_configs/flex_math_2048.py \
        --trainer.save_folder=/shared/runs/flex_math_2048 --dataset.paths='[/data/math/*.npy]'
"""

from olmo_flex_ext.recipes import flex_math_7b


def build_config():
    return flex_math_7b(2048)
