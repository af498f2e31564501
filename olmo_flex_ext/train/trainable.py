"""Which parameters train: only chosen experts of the variable-width MoE layers (FlexOlmo's recipe
for new experts), or only the routers (FlexOlmo's router tuning).

Everything outside the MoE experts (embeddings, attention, norms, LM head) is frozen as whole
tensors with OLMo-core's ``TransformerConfig.freeze_params`` (set through the experiment's
``freeze_params``, so it also works for a model read from ``load_path``).

The experts' weights are split before the model is parallelised (:func:`set_trainable_experts`,
called by the experiment when it builds the model): the trained experts' rows stay in the
trainable ``w1/w2/w3`` and the frozen experts' rows move to ``w*_frozen`` parameters with
``requires_grad=False``. Backward then computes no weight gradient for the frozen rows, the
optimizer keeps no state for them, and they cannot change; checkpoints keep the fused layout
(:mod:`olmo_flex_ext.nn.expert_rows`).

The router weight is one small tensor holding every expert's row, so it stays trainable and
:class:`TrainableExpertsCallback` zeroes the gradient rows of the other experts after backward
(``pre_optim_step``, before clipping). Under FSDP2 a gradient is a DTensor sharded on dim 0; the
row mask is sharded the same way, so each rank masks its own rows. With zero gradients and no
weight decay (AdamW's decoupled decay would shrink frozen rows) those rows stay bitwise unchanged;
:func:`olmo_flex_ext.recipes.with_expert_training` sets all of this up, and the callback refuses
a run where it is not.

Router-only training freezes every parameter family but the routers (:data:`ROUTER_ONLY_FREEZE`);
the train configs take the model from the checkpoint they start from, so the patterns cannot come
from the model itself, and :class:`RouterOnlyCheck` stops the run before the first step if anything
but the routers would train (another architecture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Dict, Iterator, List, Tuple

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
    "set_trainable_experts",
    "expert_mlps",
    "expert_freeze_patterns",
    "tolerate_wrappers",
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


def tolerate_wrappers(pattern: str) -> str:
    """An fnmatch pattern over parameter names that also matches them once OLMo-core's activation
    checkpointing has wrapped modules: ``selected_modules`` (and block-level modes) insert
    ``_checkpoint_wrapped_module.`` after each wrapped module, and optimizer group overrides are
    matched after that. Each ``.`` before a literal name may be followed by such components
    (``a.b`` becomes ``a.*b``); a ``*`` already spans them. Use it for every pattern matched after
    the model is parallelised (group overrides, checks in callbacks)."""
    parts = pattern.split(".")
    return parts[0] + "".join("." + (p if p.startswith("*") else "*" + p) for p in parts[1:])


def expert_freeze_patterns(train_router: bool = True) -> List[str]:
    """``freeze_params`` patterns for expert-only training: everything outside the experts (and
    the router unless ``train_router``)."""
    return NON_MOE_PARAMS + ([] if train_router else [ROUTER_PARAMS])


def expert_mlps(model: nn.Module) -> Iterator[Tuple[str, VariableMoE]]:
    """(name, layer) of every variable-width MoE layer."""
    for name, module in model.named_modules():
        if isinstance(module, VariableMoE):
            yield name, module


def set_trainable_experts(model: nn.Module, experts: List[int]) -> None:
    """Split the expert weights of every variable-width MoE layer of ``model`` (in place, before
    it is parallelised) so that only ``experts``' rows are trainable parameters."""
    layers = list(expert_mlps(model))
    if not layers:
        raise UserError("expert-only training needs a model with variable-width MoE layers")
    for name, layer in layers:
        if any(not 0 <= e < layer.num_experts for e in experts):
            raise UserError(
                f"trainable experts {experts} but layer {name} has {layer.num_experts} experts"
            )
        layer.experts.mlp.set_trainable_experts(experts)


@dataclass
class TrainableExpertsCallback(Callback):
    """Checks an expert-only run and zeroes the router gradient rows of every expert not in
    ``experts`` (see the module docstring)."""

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
        self._check_split(model)
        self._targets = list(self._router_targets(model))
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

    def _check_split(self, model: nn.Module) -> None:
        layers = list(expert_mlps(model))
        if not layers:
            raise UserError("expert-only training needs a model with variable-width MoE layers")
        for name, layer in layers:
            mlp: VariableMoEMLP = layer.experts.mlp
            if mlp.trained_experts != sorted(set(self.experts)):
                raise UserError(
                    f"expert-only training of experts {self.experts}, but layer {name} holds the "
                    f"rows of experts {mlp.trained_experts} in its trainable weights; build the "
                    "model with olmo_flex_ext's experiment (it calls set_trainable_experts)"
                )

    def _router_targets(self, model: nn.Module):
        """(name, parameter, rows to keep) of the router tensors shared by all experts."""
        if not self.train_router:
            return
        for name, layer in expert_mlps(model):
            router = layer.router
            keep = torch.zeros(layer.num_experts, router.d_model, dtype=torch.bool)
            keep[self.experts] = True
            yield f"{name}.router.weight", router.weight, keep.view(-1)
            if getattr(router, "expert_bias", None) is not None:  # entries of experts 1..N-1
                yield f"{name}.router.expert_bias", router.expert_bias, keep[1:, 0]

    def _check_frozen(self, model: nn.Module) -> None:
        allowed = {id(p) for _, p, _ in self._targets}
        for _, layer in expert_mlps(model):
            mlp = layer.experts.mlp
            allowed.update(id(getattr(mlp, w)) for w in ("w1", "w2", "w3"))
            moving = [w for w in ("w1_frozen", "w2_frozen", "w3_frozen")
                      if getattr(mlp, w, None) is not None and getattr(mlp, w).requires_grad]  # fmt: skip
            if moving:
                raise UserError(f"the frozen experts' rows {moving[0]} would train")
        loose = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in allowed]
        if loose:
            raise UserError(
                f"expert-only training but {len(loose)} other parameters are trainable "
                f"(e.g. {loose[0]}); build the config with with_expert_training() and add the "
                "parameter to the experiment's freeze_params"
            )
        frozen = [n for n, p, _ in self._targets if not p.requires_grad]
        for _, layer in expert_mlps(model):
            frozen += [
                w for w in ("w1", "w2", "w3") if not getattr(layer.experts.mlp, w).requires_grad
            ]
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
                        "would change the frozen experts' router rows; use "
                        "with_expert_training(), which turns it off for the routers"
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
