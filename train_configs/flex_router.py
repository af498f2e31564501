"""Router-only training ("RT", FlexOlmo's router-tuning variant) of a merged 7B FlexOlmo: only the
routers train, on a small mix of the domains' data (``$OLMO_FLEX_DATA_ROOT/router-mix/*.npy``);
every other weight is frozen. The model is the merged checkpoint given as ``--load_path``.
bfloat16 compute, compile, and a step of 32 x 4096 tokens (1 to 32 GPUs; the memory plan puts a
step of the 2-expert model at 8 or 16 GPUs of 80 GB well within them, docs/performance.md).

    torchrun --nproc-per-node=8 -m olmo_flex_ext.launch train_configs/flex_router.py \\
        --load_path=/ckpt/merged
"""

from olmo_core.data import TokenizerConfig
from olmo_core.train import Duration

from olmo_flex_ext.recipes import BF16, FLEX_7B_AC, data_root, router_experiment


def build_config():
    seq = 4096
    root = data_root("/data/olmo-flex")
    return router_experiment(
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
        param_dtype=BF16,
        compile_model=True,
        ac_config=FLEX_7B_AC,
    )
