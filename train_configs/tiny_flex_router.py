"""Router-only training ("RT") of a tiny merged FlexOlmo on synthetic tokens: only the routers
train, every other weight is frozen. The model is the checkpoint given as ``--load_path`` (for
example one made with ``olmo-flex merge ... --out runs/tiny_merged``).

    python -m olmo_flex_ext.launch train_configs/tiny_flex_router.py --load_path=runs/tiny_merged

The model's vocabulary must cover the synthetic data's 512 token ids.
"""

from olmo_flex_ext.recipes import tiny_experiment, with_router_training


def build_config():
    config = tiny_experiment(
        "tiny_flex_router", model=None, steps=50, lr=1e-2, warmup_steps=0, save_interval=25
    )
    return with_router_training(config)
