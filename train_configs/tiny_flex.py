"""A tiny FlexOlmo (experts of widths 256 and 96) trained on synthetic tokens: 200 steps in well
under a minute on a laptop CPU, with a checkpoint every 25 steps. Token data is generated under
$OLMO_FLEX_DATA_ROOT (default runs/data) on first use.

    python -m olmo_flex_ext.launch train_configs/tiny_flex.py
    torchrun --nproc-per-node=2 -m olmo_flex_ext.launch train_configs/tiny_flex.py
"""

from olmo_core.train import Duration

from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import TINY_TOKENIZER, data_root, flex_experiment


def build_config():
    seq = 128
    paths = ensure_synthetic_tokens(f"{data_root('runs/data')}/synthetic", vocab_size=512)
    return flex_experiment(
        model=tiny_flex([256, 96]),
        data_paths=paths,
        tokenizer=TINY_TOKENIZER,
        save_folder="runs/tiny_flex",
        sequence_length=seq,
        global_batch_tokens=8 * seq,
        microbatch_tokens=4 * seq,
        max_duration=Duration.steps(200),
        lr=1e-2,
        warmup_steps=5,
        save_interval=25,
        wandb_project="olmo-flex-tiny",
        wandb_name="tiny-flex",
    )
