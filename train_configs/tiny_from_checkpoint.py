"""Train any checkpoint further on the tiny synthetic data: the model config is read from the
checkpoint given as ``--load_path`` (a model-only checkpoint such as ``olmo-flex import-hf`` or
``olmo-flex upcycle`` write, a trainer ``stepN/`` directory, or a run folder). The weights are only
the starting point: running the same command again resumes from this run's own checkpoints.

    olmo-flex import-hf path/to/flexolmo-hf runs/imported
    python -m olmo_flex_ext.launch train_configs/tiny_from_checkpoint.py --load_path=runs/imported

The model's vocabulary must cover the synthetic data's 512 token ids.
"""

from olmo_flex_ext.recipes import tiny_experiment


def build_config():
    # model=None: taken from --load_path (or from this run's checkpoints when resuming)
    return tiny_experiment(
        "tiny_from_checkpoint", model=None, steps=50, lr=1e-3, warmup_steps=2, save_interval=10
    )
