"""The 7B recipe for a new FlexOlmo domain expert, trained apart from every other expert.

A data owner starts from the public model and its own data only:

1. ``olmo-flex domain-router PUBLIC --data 'OWN/*.npy' --public-data 'PUBLIC/*.npy' --out R``:
   per layer, the log-odds of the owner's data against public data on the public model's router
   inputs (:mod:`olmo_flex_ext.compose.domain_router`);
2. ``olmo-flex upcycle PUBLIC OUT --experts 2 --router-from R``: the 2-expert model (public
   expert 0, the new expert 1 a copy of the public MLP), router rows and expert bias from ``R``;
3. :func:`flex_expert_7b`: continued pretraining on the owner's data in which only expert 1's MLP
   rows train (its router row and expert bias too with ``train_router``, FlexOlmo's variant; the
   demo measures both). The public expert, its router row and every shared weight stay bitwise
   frozen, so experts trained apart merge (``olmo-flex merge``).
"""

from __future__ import annotations

from typing import Any

from olmo_core.data import TokenizerConfig
from olmo_core.train import Duration

from ..models import flex_olmo_2x7b, with_expert_bias
from ..train.experiment import ExperimentConfig
from .experiments import BF16, data_root, flex_experiment
from .flex_math import FLEX_7B_AC
from .transforms import with_expert_training

__all__ = ["flex_expert_7b"]


def flex_expert_7b(domain: str, *, train_router: bool = False, **settings: Any) -> ExperimentConfig:
    """A new 11008-wide ``domain`` expert next to the 7B public model: FlexOlmo's 50B tokens of
    the domain's data (``$OLMO_FLEX_DATA_ROOT/<domain>/*.npy``) from the upcycled checkpoint
    ``checkpoints/upcycled-<domain>`` (with the domain router's expert bias), AdamW lr 2e-4 with
    cosine decay, steps of 256 x 4096 tokens. bfloat16 compute with float32 reduction and
    optimizer state, compile, :data:`FLEX_7B_AC`: the memory plan is in docs/performance.md.
    ``settings`` override :func:`flex_experiment`'s arguments."""
    seq = 4096
    root = data_root("/data/olmo-flex")
    defaults = dict(
        model=with_expert_bias(flex_olmo_2x7b()),
        data_paths=[f"{root}/{domain}/*.npy"],
        tokenizer=TokenizerConfig.dolma2(),
        save_folder=f"runs/flex_{domain}_expert",
        sequence_length=seq,
        global_batch_tokens=256 * seq,
        microbatch_tokens=seq,
        max_duration=Duration.tokens(50_000_000_000),
        lr=2e-4,
        warmup_steps=1000,
        save_interval=1000,
        ephemeral_save_interval=250,
        wandb_project="olmo-flex",
        wandb_name=f"flex-{domain}-expert",
        load_path=f"{root}/checkpoints/upcycled-{domain}",
        param_dtype=BF16,
        compile_model=True,
        ac_config=FLEX_7B_AC,
    )
    config = flex_experiment(**{**defaults, **settings})
    return with_expert_training(config, experts=[1], train_router=train_router)
