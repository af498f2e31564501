"""The tiny FlexOlmo with its domain expert pruned 96 -> 48 by importance, then retrained on CPU.

The pruning callback scores the teacher's neurons on the synthetic calibration tokens, prunes it to
this config's widths and starts training from there; the teacher is the tiny_flex.py run:

    python -m olmo_flex_ext.launch train_configs/tiny_flex.py          # the teacher (~25 s)
    python -m olmo_flex_ext.launch train_configs/tiny_flex_prune.py    # prune + retrain
    torchrun --nproc-per-node=2 -m olmo_flex_ext.launch train_configs/tiny_flex_prune.py

Another teacher: --trainer.callbacks.prune.teacher=PATH (any checkpoint of a [256, 96] tiny_flex).
"""

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.prune.callback import PruneCallback
from olmo_flex_ext.recipes import TINY_SEQ, tiny_data, tiny_experiment


def build_config():
    prune = PruneCallback(
        teacher="runs/tiny_flex",
        calibration=tiny_data(),
        seq_len=TINY_SEQ,
        num_seqs=64,
        batch_size=8,
        # A second synthetic "domain" (another bigram chain) to show how much calibration matters.
        compare_calibration=tiny_data("synthetic-other", seed=1),
        compare_num_seqs=32,
    )
    return tiny_experiment(
        "tiny_flex_prune",
        model=tiny_flex([256, 48]),
        steps=100,
        lr=3e-3,
        save_interval=25,
        extra_callbacks={"prune": prune},
    )
