"""The tiny FlexOlmo with its domain expert pruned 96 -> 48 by importance, then retrained on CPU.

The pruning callback scores the teacher's neurons on the synthetic calibration tokens, prunes it to
this config's widths and starts training from there; the teacher is the tiny_flex.py run:

    python -m olmo_flex_ext.launch train_configs/tiny_flex.py          # the teacher (~25 s)
    python -m olmo_flex_ext.launch train_configs/tiny_flex_prune.py    # prune + retrain
    torchrun --nproc-per-node=2 -m olmo_flex_ext.launch train_configs/tiny_flex_prune.py

Another teacher: --trainer.callbacks.prune.teacher=PATH (any checkpoint of a [256, 96] tiny_flex).
"""

from olmo_core.train import Duration

from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.prune.callback import PruneCallback
from olmo_flex_ext.recipes import TINY_TOKENIZER, data_root, flex_experiment


def build_config():
    seq = 128
    root = data_root("runs/data")
    paths = ensure_synthetic_tokens(f"{root}/synthetic", vocab_size=512)
    # A second synthetic "domain" (another bigram chain) to show how much calibration matters.
    other = ensure_synthetic_tokens(f"{root}/synthetic-other", vocab_size=512, seed=1)
    prune = PruneCallback(
        teacher="runs/tiny_flex",
        calibration=paths,
        seq_len=seq,
        num_seqs=64,
        batch_size=8,
        compare_calibration=other,
        compare_num_seqs=32,
    )
    return flex_experiment(
        model=tiny_flex([256, 48]),
        data_paths=paths,
        tokenizer=TINY_TOKENIZER,
        save_folder="runs/tiny_flex_prune",
        sequence_length=seq,
        global_batch_tokens=8 * seq,
        microbatch_tokens=4 * seq,
        max_duration=Duration.steps(100),
        lr=3e-3,
        warmup_steps=5,
        save_interval=25,
        wandb_project="olmo-flex-tiny",
        wandb_name="tiny-flex-prune",
        extra_callbacks={"prune": prune},
    )
