"""Train any checkpoint further on the tiny synthetic data: the model config is read from the
checkpoint given as ``--load_path`` (a model-only checkpoint such as ``olmo-flex import-hf`` or
``olmo-flex upcycle`` write, a trainer ``stepN/`` directory, or a run folder). The weights are only
the starting point: running the same command again resumes from this run's own checkpoints.

    olmo-flex import-hf path/to/flexolmo-hf runs/imported
    python -m olmo_flex_ext.launch train_configs/tiny_from_checkpoint.py --load_path=runs/imported

The model's vocabulary must cover the synthetic data's 512 token ids.
"""

from olmo_core.train import Duration

from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.recipes import TINY_TOKENIZER, data_root, flex_experiment


def build_config():
    seq = 128
    paths = ensure_synthetic_tokens(f"{data_root('runs/data')}/synthetic", vocab_size=512)
    return flex_experiment(
        model=None,  # taken from --load_path (or from this run's checkpoints when resuming)
        data_paths=paths,
        tokenizer=TINY_TOKENIZER,
        save_folder="runs/tiny_from_checkpoint",
        sequence_length=seq,
        global_batch_tokens=8 * seq,
        microbatch_tokens=4 * seq,
        max_duration=Duration.steps(50),
        lr=1e-3,
        warmup_steps=2,
        save_interval=10,
        wandb_project="olmo-flex-tiny",
        wandb_name="tiny-from-checkpoint",
    )
