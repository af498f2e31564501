"""Flex-math-2x7B-1T with the math expert at width 5504 (public expert 11008).

    torchrun --nproc-per-node=4 -m olmo_flex_ext.launch train_configs/flex_math_5504.py \
        --trainer.save_folder=/shared/runs/flex_math_5504 --dataset.paths='[/data/math/*.npy]'

A step is 12 sequences of 4096 tokens (the reference recipe): run it on 4, 6 or 12 GPUs,
or on 8 or more set --data_loader.global_batch_size to a multiple of 4096 x GPUs.
"""

from olmo_flex_ext.recipes import flex_math_7b


def build_config():
    return flex_math_7b(5504)
