"""Router-only training ("RT", FlexOlmo's router-tuning variant) of a merged 7B FlexOlmo: only the
routers train, on a small mix of the domains' data; every other weight is frozen.

The merged checkpoint comes from ``OLMO_FLEX_MERGED`` (default ``runs/flex_merged``, made with
``olmo-flex merge``); its config defines the model. Without it, a dry run shows a public expert
plus two 11008-wide domain experts, top-2, and training stops with a clear error.

    OLMO_FLEX_MERGED=/ckpt/merged torchrun --nproc-per-node=8 -m olmo_flex_ext.launch train_configs/flex_router.py
"""

import os

from olmo_core.data import TokenizerConfig
from olmo_core.train import Duration

from olmo_flex_ext.compose import router_experiment
from olmo_flex_ext.models import flex_olmo_7b_experts
from olmo_flex_ext.recipes import data_root


def build_config():
    seq = 4096
    root = data_root("/data/olmo-flex")
    return router_experiment(
        init=os.environ.get("OLMO_FLEX_MERGED", "runs/flex_merged"),
        model=flex_olmo_7b_experts([11008, 11008, 11008], top_k=2),
        data_paths=[f"{root}/router-mix/*.npy"],
        tokenizer=TokenizerConfig.dolma2(),
        save_folder="runs/flex_router",
        sequence_length=seq,
        global_batch_tokens=32 * seq,
        microbatch_tokens=seq,
        max_duration=Duration.tokens(50_000_000),
        lr=1e-4,
        warmup_steps=20,
        save_interval=100,
        wandb_project="olmo-flex",
        wandb_name="flex-router-rt",
    )
