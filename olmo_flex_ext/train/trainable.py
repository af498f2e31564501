"""Which parameters train: only chosen experts of the variable-width MoE layers (FlexOlmo's recipe
for new experts), or only the routers (FlexOlmo's router tuning).

Everything outside the MoE experts (embeddings, attention, norms, LM head) is frozen as whole
tensors with OLMo-core's ``TransformerConfig.freeze_params`` (set through the experiment's
``freeze_params``, so it also works for a model read from ``load_path``). The experts' weights ``w1/w2/w3``
and the router weight are shared tensors holding every expert's rows, so they stay trainable and
:class:`TrainableExpertsCallback` zeroes the gradient rows of the other experts after backward
(``pre_optim_step``, before clipping). Under FSDP2 a gradient is a DTensor sharded on dim 0; the
row mask is sharded the same way, so each rank masks its own rows. With zero gradients and no
weight decay (AdamW's decoupled decay would shrink frozen rows) those rows stay bitwise unchanged;
:func:`olmo_flex_ext.recipes.with_expert_training` sets all three up, and the callback refuses a
run where they are not.

Router-only training freezes every parameter family but the routers (:data:`ROUTER_ONLY_FREEZE`);
the train configs take the model from the checkpoint they start from, so the patterns cannot come
from the model itself, and :class:`RouterOnlyCheck` stops the run before the first step if anything
but the routers would train (another architecture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from olmo_core.distributed.utils import get_local_tensor
from olmo_core.train.callbacks import Callback
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import UserError
from ..nn.moe import VariableMoE, VariableMoEMLP

__all__ = [
    "TrainableExpertsCallback",
    "RouterOnlyCheck",
    "expert_freeze_patterns",
    "shared_moe_patterns",
    "check_router_only",
    "NON_MOE_PARAMS",
    "ROUTER_PARAMS",
    "ROUTER_ONLY_FREEZE",
]


NON_MOE_PARAMS: List[str] = [
    "embeddings.*",
    "lm_head.*",
    "blocks.*.attention.*",
    "blocks.*.attention_norm.*",
    "blocks.*.feed_forward_norm.*",
]
"""``freeze_params`` patterns (fnmatch) for every FlexOlmo parameter outside the MoE layers
(fnmatch has no negation, so the families are listed); :class:`TrainableExpertsCallback` stops a
run whose model has anything else trainable."""

ROUTER_PARAMS = "blocks.*.feed_forward_moe.router.*"
"""The parameters router-only training trains (router weight and, if present, expert bias)."""

ROUTER_ONLY_FREEZE: List[str] = NON_MOE_PARAMS + ["blocks.*.feed_forward_moe.experts.*"]
"""``freeze_params`` patterns (fnmatch, as OLMo-core takes them) for every FlexOlmo parameter
except the routers (fnmatch has no negation, so the other families are listed)."""


def shared_moe_patterns(train_router: bool = True) -> List[str]:
    """Parameter-name patterns of the tensors shared by all experts of a layer."""
    out = [f"blocks.*.feed_forward_moe.experts.mlp.{w}" for w in ("w1", "w2", "w3")]
    return out + ([ROUTER_PARAMS] if train_router else [])


def expert_freeze_patterns(train_router: bool = True) -> List[str]:
    """``freeze_params`` patterns for expert-only training: everything outside the experts (and
    the router unless ``train_router``)."""
    return NON_MOE_PARAMS + ([] if train_router else [ROUTER_PARAMS])


@dataclass
class TrainableExpertsCallback(Callback):
    """Zero the gradient rows of every expert not in ``experts`` (see the module docstring)."""

    experts: List[int] = field(default_factory=lambda: [1])
    train_router: bool = True
    enabled: bool = True

    def __post_init__(self):
        self._targets: List[Tuple[str, nn.Parameter, torch.Tensor]] = []
        self._local_masks: Dict[str, torch.Tensor] = {}

    def post_attach(self):
        if not self.enabled:
            return
        model = self.trainer.train_module.model
        self._targets = list(self._find_targets(model))
        if not self._targets:
            raise UserError("expert-only training needs a model with variable-width MoE layers")
        self._check_frozen(model)
        self._check_no_weight_decay()

    def pre_optim_step(self):
        if not self.enabled:
            return
        with torch.no_grad():
            for name, param, keep in self._targets:
                if param.grad is None:
                    continue
                local = get_local_tensor(param.grad)
                mask = self._local_mask(name, param.grad, keep)
                local.masked_fill_(~mask.view(-1, *([1] * (local.dim() - 1))), 0.0)

    # ---- helpers -------------------------------------------------------------------------

    def _find_targets(self, model: nn.Module):
        for name, module in model.named_modules():
            if isinstance(module, VariableMoE):
                n, bad = module.num_experts, [e for e in self.experts if not 0 <= e < module.num_experts]
                if bad:
                    raise UserError(
                        f"trainable experts {self.experts} but layer {name} has {n} experts"
                    )
                mlp: VariableMoEMLP = module.experts.mlp
                rows = torch.zeros(sum(mlp.expert_widths), dtype=torch.bool)
                for e in self.experts:
                    rows[mlp.expert_slice(e)] = True
                for w in ("w1", "w2", "w3"):
                    yield f"{name}.experts.mlp.{w}", getattr(mlp, w), rows
                if self.train_router:
                    router = module.router
                    keep = torch.zeros(n, router.d_model, dtype=torch.bool)
                    keep[self.experts] = True
                    yield f"{name}.router.weight", router.weight, keep.view(-1)

    def _check_frozen(self, model: nn.Module) -> None:
        target_ids = {id(p) for _, p, _ in self._targets}
        loose = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in target_ids]
        if loose:
            raise UserError(
                f"expert-only training but {len(loose)} other parameters are trainable "
                f"(e.g. {loose[0]}); build the config with with_expert_training() and add the "
                "parameter to the experiment's freeze_params"
            )
        frozen = [n for n, p, _ in self._targets if not p.requires_grad]
        if frozen:
            raise UserError(
                f"{frozen[0]} is frozen but holds the trainable experts' rows; remove it from "
                "model.freeze_params"
            )

    def _check_no_weight_decay(self) -> None:
        optim = self.trainer.train_module.optim
        if optim is None:
            return
        for name, param, _ in self._targets:
            for group in optim.param_groups:
                if any(p is param for p in group["params"]) and group.get("weight_decay", 0.0):
                    raise UserError(
                        f"{name} has weight_decay={group['weight_decay']}: decoupled weight decay "
                        "would change the frozen experts' rows; use with_expert_training(), which "
                        "turns it off for the shared MoE tensors"
                    )

    def _local_mask(self, name: str, grad: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        mask = self._local_masks.get(name)
        if mask is None:
            keep = keep.to(grad.device)
            if isinstance(grad, DTensor):  # shard the row mask exactly like the gradient
                keep = distribute_tensor(
                    keep, grad.device_mesh, grad.placements, src_data_rank=None
                ).to_local()
            mask = self._local_masks[name] = keep
        return mask


def check_router_only(names_trainable: List[Tuple[str, bool]]) -> None:
    """Raise :class:`UserError` unless exactly the router parameters are trainable
    (``names_trainable``: parameter name and whether it trains)."""
    wrong = [n for n, trainable in names_trainable if trainable != fnmatch(n, ROUTER_PARAMS)]
    if wrong:
        raise UserError(
            f"router-only training would {'train' if dict(names_trainable)[wrong[0]] else 'freeze'} "
            f"{wrong[0]}; only {ROUTER_PARAMS} may train (is this a FlexOlmo model?)"
        )


@dataclass
class RouterOnlyCheck(Callback):
    """Refuses to start unless exactly the routers' parameters are trainable."""

    def pre_train(self):
        model = self.trainer.train_module.model
        check_router_only([(n, p.requires_grad) for n, p in model.named_parameters()])
