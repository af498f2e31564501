"""Router-only training (FlexOlmo's "RT" variant): train the routers of a merged model on a small
mix of the domains' data, every other weight frozen through OLMo-core's ``freeze_params``."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path
from typing import List, Optional

from olmo_core.data import TokenizerConfig
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.train import Duration

from ..errors import UserError

__all__ = ["ROUTER_PARAMS", "router_only_patterns", "router_only", "router_experiment"]

ROUTER_PARAMS = "blocks.*.feed_forward_moe.router.*"
"""The parameters router-only training trains (router weight and, if present, expert bias)."""


def router_only_patterns(config: TransformerConfig) -> List[str]:
    """``freeze_params`` patterns (fnmatch, as OLMo-core takes them) that freeze every parameter of
    ``config``'s model except the routers' (fnmatch has no negation, so they are listed)."""
    names = [n for n, _ in config.build(init_device="meta").named_parameters()]
    patterns: List[str] = []
    for name in names:
        if fnmatch(name, ROUTER_PARAMS):
            continue
        pattern = re.sub(r"^blocks\.\d+\.", "blocks.*.", name)
        if pattern not in patterns:
            patterns.append(pattern)
    trained = [n for n in names if not any(fnmatch(n, p) for p in patterns)]
    if not trained or any(not fnmatch(n, ROUTER_PARAMS) for n in trained):
        raise UserError(f"cannot freeze all but the routers of this model (trainable: {trained})")
    return patterns


def router_only(config: TransformerConfig) -> TransformerConfig:
    """A copy of ``config`` whose built model trains only its routers."""
    config = config.copy()
    config.freeze_params = router_only_patterns(config)
    return config


def router_experiment(
    *,
    init: Optional[str],
    model: Optional[TransformerConfig] = None,
    data_paths: List[str],
    tokenizer: TokenizerConfig,
    save_folder: str,
    sequence_length: int,
    global_batch_tokens: int,
    microbatch_tokens: int,
    max_duration: Duration,
    lr: float,
    warmup_steps: int = 0,
    save_interval: int = 1000,
    wandb_project: Optional[str] = "olmo-flex",
    wandb_name: Optional[str] = None,
):
    """An experiment that trains only the routers of the model in checkpoint ``init`` (its config
    is read from the checkpoint; ``model`` is used when ``init`` is ``None`` or does not exist yet,
    e.g. for a dry run). Weight decay is 0, so frozen weights stay bitwise unchanged."""
    from ..checkpoint import read_model_config
    from ..recipes import flex_experiment

    if init is not None and Path(init).exists():
        model = read_model_config(init)
    if model is None:
        raise UserError(
            f"router training needs the merged checkpoint {init}, which does not exist; "
            "make it with `olmo-flex merge` or point the config at it"
        )
    return flex_experiment(
        model=router_only(model),
        data_paths=data_paths,
        tokenizer=tokenizer,
        save_folder=save_folder,
        sequence_length=sequence_length,
        global_batch_tokens=global_batch_tokens,
        microbatch_tokens=microbatch_tokens,
        max_duration=max_duration,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=0.0,
        save_interval=save_interval,
        wandb_project=wandb_project,
        wandb_name=wandb_name,
        load_path=init,
    )
