"""Router-only training ("RT") of a tiny merged FlexOlmo on synthetic tokens: only the routers
train, every other weight is frozen. The model is the checkpoint given as ``--load_path`` (for
example one made with ``olmo-flex merge ... --out runs/tiny_merged``).

    python -m olmo_flex_ext.launch train_configs/tiny_flex_router.py --load_path=runs/tiny_merged

The model's vocabulary must cover the synthetic data's 512 token ids.
"""

from olmo_core.train import Duration

from olmo_flex_ext.compose import router_experiment
from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.recipes import TINY_TOKENIZER, data_root


def build_config():
    seq = 128
    paths = ensure_synthetic_tokens(f"{data_root('runs/data')}/synthetic", vocab_size=512)
    return router_experiment(
        data_paths=paths,
        tokenizer=TINY_TOKENIZER,
        save_folder="runs/tiny_flex_router",
        sequence_length=seq,
        global_batch_tokens=8 * seq,
        microbatch_tokens=4 * seq,
        max_duration=Duration.steps(50),
        lr=1e-2,
        save_interval=25,
        wandb_project="olmo-flex-tiny",
        wandb_name="tiny-flex-router",
    )
