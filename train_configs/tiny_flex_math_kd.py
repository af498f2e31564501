"""The CPU twin of flex_math_*.py: the tiny FlexOlmo's domain expert pruned 96 -> 32 by the pruning
callback (importance on the teacher, before step 1 of a fresh run), then distilled from the
unpruned teacher's top-k store with only expert 1 and its router row training.

    python -m olmo_flex_ext.launch train_configs/tiny_flex.py                 # the teacher
    olmo-flex logprobs runs/tiny_flex --data 'runs/data/synthetic/*.npy' --seq-len 128 \\
        --top-k 32 --out runs/tiny_flex_math_kd/store                         # its top-k store
    python -m olmo_flex_ext.launch train_configs/tiny_flex_math_kd.py         # prune + distill

Settings: ``--trainer.callbacks.prune.teacher`` (the checkpoint to prune) and
``--train_module.teacher_path`` (the store must have been made from it; both default to
``runs/tiny_flex``), ``--dataset.topk_store``. Alternatively ``--load_path=PRUNED`` starts from a
checkpoint pruned offline (``olmo-flex prune ... --widths 256,32``); the callback then does nothing.
A student of another width: ``--model.block.feed_forward_moe.expert_widths=[256,48]``.
"""

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.prune.callback import PruneCallback
from olmo_flex_ext.recipes import (
    TINY_SEQ,
    tiny_data,
    tiny_experiment,
    with_distillation,
    with_expert_training,
)

TEACHER = "runs/tiny_flex"
STORE = "runs/tiny_flex_math_kd/store"


def build_config():
    prune = PruneCallback(
        teacher=TEACHER, calibration=tiny_data(), seq_len=TINY_SEQ, num_seqs=64, batch_size=8
    )
    config = tiny_experiment(
        "tiny_flex_math_kd",
        model=tiny_flex([256, 32]),
        steps=200,
        lr=3e-3,
        save_interval=50,
        extra_callbacks={"prune": prune},
    )
    config = with_distillation(config, store=STORE, teacher_path=TEACHER)
    return with_expert_training(config, experts=[1], train_router=True)
