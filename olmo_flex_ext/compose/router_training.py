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
from typing import Any, List

from olmo_core.nn.transformer import TransformerConfig
from olmo_core.train.callbacks import Callback

from ..errors import UserError
from ..train.trainable import NON_MOE_PARAMS, ROUTER_PARAMS

__all__ = [
    "ROUTER_PARAMS",
    "ROUTER_ONLY_FREEZE",
    "RouterOnlyCheck",
    "router_only",
    "router_only_patterns",
    "router_only_experiment",
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


def router_only_experiment(config):
    """Make an experiment config (an ``ExperimentConfig``) train only the routers of its model,
    also a model it reads from ``load_path``: every other parameter family is frozen through the
    experiment's ``freeze_params``, weight decay is 0 and :class:`RouterOnlyCheck` refuses to start
    if anything but the routers would train. Returns it."""
    config.freeze_params = list(dict.fromkeys((config.freeze_params or []) + ROUTER_ONLY_FREEZE))
    config.train_module.optim.weight_decay = 0.0
    config.trainer.callbacks["router_only_check"] = RouterOnlyCheck()
    return config


def router_experiment(**settings: Any):
    """An experiment that trains only the routers of the model it starts from (``load_path``,
    usually given as ``--load_path=MERGED``; the model config is read from that checkpoint):
    :func:`~olmo_flex_ext.recipes.flex_experiment` with ``settings`` (data, batch sizes, lr, run
    folder, W&B), then :func:`router_only_experiment`."""
    from ..recipes import flex_experiment

    return router_only_experiment(flex_experiment(model=None, **settings))  # type: ignore[arg-type]
