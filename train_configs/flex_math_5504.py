"""Flex-math-2x7B-1T with the math expert pruned 11008 -> 5504 (public expert 11008), then distilled.

On a fresh run the pruning callback scores the teacher's neurons on math calibration data, prunes
it to 5504 and trains from there; a resumed run just continues. Given --load_path (a checkpoint
pruned offline with `olmo-flex prune`) the run starts from that instead and the callback does
nothing.

    torchrun --nproc-per-node=8 -m olmo_flex_ext.launch train_configs/flex_math_5504.py \
        --trainer.save_folder=/shared/runs/flex_math_5504 --dataset.paths='[/data/math/*.npy]' \
        --trainer.callbacks.prune.teacher=/shared/ckpt/Flex-math-2x7B-1T \
        --trainer.callbacks.prune.calibration='[/data/math/*.npy]' \
        --dataset.topk_store=/data/topk/flex-math-2x7b-top128

A step is 16 sequences of 4096 tokens, so it runs on 1, 2, 4, 8 or 16 GPUs; bfloat16 compute,
compile and activation checkpointing as the memory plan for 8 and 16 GPUs of 80 GB chose
(`olmo-flex plan train_configs/flex_math_5504.py --world-size 8`, docs/performance.md).
"""

from olmo_flex_ext.recipes import flex_math_7b


def build_config():
    return flex_math_7b(5504)  # the pruning callback prunes the teacher on a fresh run
