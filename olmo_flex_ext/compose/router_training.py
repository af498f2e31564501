"""Router-only training (FlexOlmo's "RT" variant): train the routers of a merged model on a small
mix of the domains' data, every other weight frozen through OLMo-core's ``freeze_params``.

The train configs take the model from the checkpoint they start from (``--load_path=MERGED``), so
the freeze patterns cannot come from the model itself: :data:`ROUTER_ONLY_FREEZE` names every
parameter family of a FlexOlmo transformer except the routers, and :class:`RouterOnlyCheck` stops
the run before the first step if anything but the routers would train (another architecture).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import List, Optional

from olmo_core.data import TokenizerConfig
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.train import Duration
from olmo_core.train.callbacks import Callback

from ..errors import UserError
from ..train.trainable import NON_MOE_PARAMS, ROUTER_PARAMS

__all__ = [
    "ROUTER_PARAMS",
    "ROUTER_ONLY_FREEZE",
    "RouterOnlyCheck",
    "router_only",
    "router_only_patterns",
    "router_experiment",
]

# ROUTER_PARAMS: the parameters router-only training trains (router weight and, if present,
# expert bias); NON_MOE_PARAMS: every family outside the MoE layers (shared with expert-only
# training).
ROUTER_ONLY_FREEZE: List[str] = NON_MOE_PARAMS + ["blocks.*.feed_forward_moe.experts.*"]
"""``freeze_params`` patterns (fnmatch, as OLMo-core takes them) for every FlexOlmo parameter
except the routers (fnmatch has no negation, so the other families are listed)."""


def _check_router_only(names_trainable: List[tuple]) -> None:
    wrong = [n for n, trainable in names_trainable if trainable != fnmatch(n, ROUTER_PARAMS)]
    if wrong:
        raise UserError(
            f"router-only training would {'train' if dict(names_trainable)[wrong[0]] else 'freeze'} "
            f"{wrong[0]}; only {ROUTER_PARAMS} may train (is this a FlexOlmo model?)"
        )


def router_only_patterns(config: TransformerConfig) -> List[str]:
    """:data:`ROUTER_ONLY_FREEZE`, after checking on ``config``'s model (built on the meta device)
    that they leave exactly the routers trainable."""
    names = [n for n, _ in config.build(init_device="meta").named_parameters()]
    _check_router_only([(n, not any(fnmatch(n, p) for p in ROUTER_ONLY_FREEZE)) for n in names])
    return list(ROUTER_ONLY_FREEZE)


def router_only(config: TransformerConfig) -> TransformerConfig:
    """A copy of ``config`` whose built model trains only its routers."""
    patterns = router_only_patterns(config)
    config = config.copy()
    config.freeze_params = list(dict.fromkeys((config.freeze_params or []) + patterns))
    return config


@dataclass
class RouterOnlyCheck(Callback):
    """Refuses to start unless exactly the routers' parameters are trainable."""

    def pre_train(self):
        model = self.trainer.train_module.model
        _check_router_only([(n, p.requires_grad) for n, p in model.named_parameters()])


def router_experiment(
    *,
    data_paths: List[str],
    tokenizer: TokenizerConfig,
    save_folder: str,
    sequence_length: int,
    global_batch_tokens: int,
    microbatch_tokens: int,
    max_duration: Duration,
    lr: float,
    load_path: Optional[str] = None,
    warmup_steps: int = 0,
    save_interval: int = 1000,
    wandb_project: Optional[str] = "olmo-flex",
    wandb_name: Optional[str] = None,
):
    """An experiment that trains only the routers of the model it starts from (``load_path``,
    usually given as ``--load_path=MERGED``; the model config is read from that checkpoint).
    Weight decay is 0, so frozen weights stay bitwise unchanged."""
    from ..recipes import flex_experiment

    config = flex_experiment(
        model=None,  # type: ignore[arg-type]  # taken from the checkpoint by load_experiment
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
        load_path=load_path,
        extra_callbacks={"router_only_check": RouterOnlyCheck()},
    )
    config.freeze_params = list(ROUTER_ONLY_FREEZE)
    return config
