"""A tiny FlexOlmo (experts of widths 256 and 96) trained on synthetic tokens: 200 steps in well
under a minute on a laptop CPU, with a checkpoint every 25 steps. Token data is generated under
$OLMO_FLEX_DATA_ROOT (default runs/data) on first use.

    python -m olmo_flex_ext.launch train_configs/tiny_flex.py
    torchrun --nproc-per-node=2 -m olmo_flex_ext.launch train_configs/tiny_flex.py
"""

from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import tiny_experiment


def build_config():
    return tiny_experiment(
        "tiny_flex", model=tiny_flex([256, 96]), steps=200, lr=1e-2, save_interval=25
    )
