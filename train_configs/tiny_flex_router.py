"""Router-only training ("RT") of a tiny merged FlexOlmo on synthetic tokens, all other weights
frozen. Point it at a merged checkpoint with ``OLMO_FLEX_ROUTER_INIT`` (``olmo-flex merge ...
--out runs/tiny_merged``); without one it trains the routers of a freshly initialised tiny model
with a public expert and three domain experts of different widths.

    OLMO_FLEX_ROUTER_INIT=runs/tiny_merged python -m olmo_flex_ext.launch train_configs/tiny_flex_router.py
"""

import os

from olmo_core.train import Duration

from olmo_flex_ext.compose import router_experiment
from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import TINY_TOKENIZER, data_root


def build_config():
    seq = 128
    paths = ensure_synthetic_tokens(f"{data_root('runs/data')}/synthetic", vocab_size=512)
    return router_experiment(
        init=os.environ.get("OLMO_FLEX_ROUTER_INIT"),
        model=tiny_flex([256, 128, 96, 64], top_k=2),
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
