"""A mixture of SwiGLU experts where every expert has its own width.

OLMo-core's MoE layers give all experts of a layer one ``hidden_size`` and need CUDA kernels for
their forward pass. :class:`VariableMoE` keeps OLMo-core's router, auxiliary losses, metrics and
parameter names (``experts.mlp.w1/w2/w3``, each ``(sum of widths, d_model)`` with expert 0's rows
first), and computes the experts in plain torch so it runs on CPU and CUDA alike:

- every token visits every expert (``top_k == num_experts``, FlexOlmo 2x7B): the layer is one
  SwiGLU MLP over the concatenated width whose activations are scaled by the router probability of
  the expert they belong to, i.e. three dense matmuls and no per-token dispatch;
- otherwise tokens are sorted by expert once and each expert runs on its contiguous block of
  tokens only (:meth:`VariableMoEMLP.forward_routed`).

Experts can be switched off (``VariableMoEConfig.opt_out``, or :meth:`VariableMoE.set_opt_out` on a
built model): routing then runs over the remaining experts with ``top_k = min(top_k, remaining)``
(see :mod:`olmo_flex_ext.nn.router`), which is exactly the model without those experts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from olmo_core.config import DType
from olmo_core.distributed.utils import get_local_tensor
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.buffer_cache import BufferCache
from olmo_core.nn.moe import MoEBase, MoEConfig
from olmo_core.nn.moe.mlp import MoEMLPBase
from olmo_core.nn.moe.parallel_mlp import ParallelMLPBase
from olmo_core.nn.moe.router import MoERouterConfig

from .expert_rows import RowRanges, fuse_rows, split_rows
from .router import FlexRouter, FlexRouterConfig, active_experts

__all__ = [
    "VariableMoEConfig",
    "VariableMoE",
    "VariableExperts",
    "VariableMoEMLP",
    "ExpertProbe",
    "ExpertRouting",
    "validate_widths",
    "EXPERT_WEIGHT_RE",
    "expert_weight",
]

EXPERT_WEIGHT_RE = re.compile(r"^blocks\.(\d+)\.feed_forward_moe\.experts\.mlp\.(w[123])$")
"""State-dict name of an expert weight: groups (layer, ``w1``/``w2``/``w3``)."""


def expert_weight(name: str) -> Optional[Tuple[int, str]]:
    """``(layer, "w1"|"w2"|"w3")`` for the name of an expert weight, else ``None``."""
    m = EXPERT_WEIGHT_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def validate_widths(widths: Sequence[int], num_experts: int, top_k: int) -> None:
    """Raise :class:`OLMoConfigurationError` naming the problem if the widths are unusable."""
    if len(widths) == 0:
        raise OLMoConfigurationError(
            "expert_widths is empty: give one MLP width per expert, e.g. expert_widths=[11008, 5504]"
        )
    bad = [w for w in widths if not isinstance(w, int) or isinstance(w, bool) or w <= 0]
    if bad:
        raise OLMoConfigurationError(
            f"expert_widths={list(widths)} has a width that is not a positive integer ({bad[0]!r}); "
            "every expert needs at least one neuron"
        )
    if len(widths) != num_experts:
        raise OLMoConfigurationError(
            f"expert_widths has {len(widths)} entries but num_experts={num_experts}: "
            "give exactly one width per expert (to change the number of experts, set num_experts "
            "to the new count as well)"
        )
    if not 1 <= top_k <= num_experts:
        raise OLMoConfigurationError(
            f"router.top_k={top_k} must be between 1 and num_experts={num_experts}"
        )


@dataclass
class VariableMoEConfig(MoEConfig):
    """An :class:`~olmo_core.nn.moe.MoEConfig` with one MLP width per expert.

    ``hidden_size`` is ignored (kept for compatibility with OLMo-core's config); ``num_experts``
    must equal ``len(expert_widths)``. ``opt_out`` lists experts switched off at run time (the
    weights stay; routing skips them, so the layer equals the layer without those experts).
    """

    expert_widths: List[int] = field(default_factory=list)
    opt_out: Optional[List[int]] = None

    def __post_init__(self):
        validate_widths(self.expert_widths, self.num_experts, self.router.top_k)
        active_experts(self.num_experts, self.opt_out)
        self.hidden_size = max(self.expert_widths)

    @property
    def total_width(self) -> int:
        return sum(self.expert_widths)

    def num_params(self, d_model: int) -> int:
        return self.router.num_params(d_model, self.num_experts) + 3 * d_model * self.total_width

    def num_active_params(self, d_model: int) -> int:
        """Parameters a token can touch: the router plus the ``top_k`` widest (switched-on) experts."""
        on = [self.expert_widths[e] for e in active_experts(self.num_experts, self.opt_out)]
        widest = sorted(on, reverse=True)[: self.router.top_k]
        return self.router.num_params(d_model, self.num_experts) + 3 * d_model * sum(widest)

    def build(
        self,
        d_model: int,
        *,
        n_layers: int = 1,
        init_device: str = "cpu",
        cache: Optional[BufferCache] = None,
    ) -> "VariableMoE":
        validate_widths(self.expert_widths, self.num_experts, self.router.top_k)
        active_experts(self.num_experts, self.opt_out)
        if self.shared_mlp is not None or self.latent_moe is not None:
            raise OLMoConfigurationError(
                "VariableMoEConfig supports neither shared_mlp nor latent_moe; set both to None"
            )
        return VariableMoE(
            d_model=d_model,
            num_experts=self.num_experts,
            hidden_size=max(self.expert_widths),
            expert_widths=list(self.expert_widths),
            opt_out=list(self.opt_out or []),
            router=FlexRouterConfig.from_router_config(self.router),
            init_device=init_device,
            lb_loss_weight=self.lb_loss_weight,
            lb_loss_granularity=self.lb_loss_granularity,
            z_loss_weight=self.z_loss_weight,
            scale_loss_by_num_layers=self.scale_loss_by_num_layers,
            n_layers=n_layers,
            dtype=DType(self.dtype).as_pt(),
            cache=cache,
        )


def variable_moe_config(
    expert_widths: Sequence[int],
    top_k: int,
    *,
    lb_loss_weight: Optional[float] = 0.01,
    z_loss_weight: Optional[float] = 0.001,
    dtype: DType = DType.float32,
) -> VariableMoEConfig:
    """Shorthand for a :class:`VariableMoEConfig` with OLMo-core's default router."""
    return VariableMoEConfig(
        num_experts=len(expert_widths),
        hidden_size=max(expert_widths) if len(expert_widths) else 0,
        expert_widths=list(expert_widths),
        router=MoERouterConfig(top_k=top_k),
        lb_loss_weight=lb_loss_weight,
        z_loss_weight=z_loss_weight,
        dtype=dtype,
    )


@dataclass
class ExpertRouting:
    """Which tokens an expert's activations belong to (passed to :class:`ExpertProbe` hooks)."""

    expert: int
    """Index of the expert."""
    tokens: Optional[torch.Tensor]
    """Flat token indices into the ``(batch * seq_len)`` input, or ``None`` for all tokens."""
    weights: torch.Tensor
    """Router probability of this expert for each of those tokens, shape ``(n,)``."""
    batch_shape: torch.Size
    """Leading shape of the MoE input, e.g. ``(batch, seq_len)``."""


class ExpertProbe(nn.Module):
    """Identity on one expert's SwiGLU activations (the input to ``w2``), shape ``(n, width)``.

    It exists so analyses such as neuron importance can observe activations with a plain
    ``register_forward_hook``; the hook's ``args`` are ``(activations, routing)``.
    """

    def forward(self, activations: torch.Tensor, routing: ExpertRouting) -> torch.Tensor:
        del routing
        return activations


class VariableMoEMLP(MoEMLPBase):
    """The experts' weights, stored like OLMo-core's dropless MLP but with ragged widths.

    :meth:`set_trainable_experts` splits them for expert-only training: ``w1/w2/w3`` then hold
    only the trained experts' rows and ``w1_frozen/w2_frozen/w3_frozen`` (``requires_grad=False``)
    the other experts' rows, so backward computes no weight gradient for the frozen rows and the
    optimizer (which holds only trainable parameters) keeps no state for them. The state dict
    still shows one fused ``w1/w2/w3`` each (:mod:`~olmo_flex_ext.nn.expert_rows`), so checkpoints,
    ``load_path``, resume and every tool see the same layout either way.
    """

    def __init__(
        self,
        *,
        d_model: int,
        expert_widths: Sequence[int],
        dtype: torch.dtype = torch.float32,
        init_device: str = "cpu",
    ):
        widths = [int(w) for w in expert_widths]
        super().__init__(d_model=d_model, hidden_size=max(widths), num_experts=len(widths))
        self.expert_widths = widths
        self.offsets = [0]
        for w in widths:
            self.offsets.append(self.offsets[-1] + w)
        total = self.offsets[-1]
        self.w1 = nn.Parameter(torch.empty(total, d_model, device=init_device, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(total, d_model, device=init_device, dtype=dtype))
        self.w3 = nn.Parameter(torch.empty(total, d_model, device=init_device, dtype=dtype))
        self.frozen_experts: List[int] = []
        """Experts whose rows live in ``w*_frozen`` (empty: ``w1/w2/w3`` hold every expert)."""
        self.assumed_routing: Optional[str] = None
        """For memory plans on fake tensors, which have no values to count: the routed path takes
        the tokens per expert as ``"balanced"`` (even over the active experts) or ``"worst"``
        (every token to the ``top_k`` widest) instead of counting them. ``None``: counted."""
        self.probe = ExpertProbe()
        self.register_state_dict_post_hook(_fused_state)
        self.register_load_state_dict_pre_hook(_split_state)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in self._weights():
            nn.init.trunc_normal_(w, std=0.02, a=-0.06, b=0.06)

    def extra_repr(self) -> str:
        frozen = f", frozen_experts={self.frozen_experts}" if self.frozen_experts else ""
        return f"d_model={self.d_model}, expert_widths={self.expert_widths}{frozen}"

    def _apply_ep_refused(self, *args, **kwargs):
        raise OLMoConfigurationError(
            "expert/tensor parallelism is not supported for variable-width experts; "
            "use data parallelism (FSDP, HSDP or DDP) instead"
        )

    apply_ep = _apply_ep_refused
    apply_tp = _apply_ep_refused

    def expert_slice(self, expert: int) -> slice:
        """Rows of ``expert`` in the fused ``(sum of widths, d_model)`` layout."""
        return slice(self.offsets[expert], self.offsets[expert + 1])

    def _probing(self) -> bool:
        return bool(self.probe._forward_hooks or self.probe._forward_pre_hooks)

    def expert_rows(self, experts: Sequence[int]) -> torch.Tensor:
        """Row indices of ``w1/w2/w3`` that belong to ``experts``, in that order."""
        return torch.cat([torch.arange(self.offsets[e], self.offsets[e + 1]) for e in experts])

    # ---- trained and frozen rows ----------------------------------------------------------

    @property
    def trained_experts(self) -> List[int]:
        """Experts whose rows live in ``w1/w2/w3``."""
        return [e for e in range(self.num_experts) if e not in self.frozen_experts]

    def set_trainable_experts(self, experts: Sequence[int]) -> None:
        """Split the weights (in place, before FSDP or activation checkpointing wrap the model)
        so that only ``experts``' rows stay in the trainable ``w1/w2/w3`` and the other experts'
        rows move to frozen ``w*_frozen`` parameters; their values are kept."""
        trained = sorted(set(experts))
        if not trained or any(not 0 <= e < self.num_experts for e in trained):
            raise OLMoConfigurationError(
                f"trainable experts {list(experts)}: give at least one of 0..{self.num_experts - 1}"
            )
        if self.frozen_experts:
            if trained != self.trained_experts:
                raise OLMoConfigurationError(
                    f"the experts are already split with {self.trained_experts} trainable"
                )
            return
        frozen = [e for e in range(self.num_experts) if e not in trained]
        if not frozen:
            return
        fused = {n: self._parameters.pop(n) for n in ("w1", "w2", "w3")}
        with torch.no_grad():
            for rows, suffix in ((trained, ""), (frozen, "_frozen")):
                for name, w in fused.items():
                    block = torch.cat([w[self.expert_slice(e)] for e in rows])
                    grad = w.requires_grad and suffix == ""
                    self.register_parameter(name + suffix, nn.Parameter(block, requires_grad=grad))
        self.frozen_experts = frozen

    def set_full_weight(self, name: str, full: torch.Tensor) -> None:
        """Copy a full fused ``(sum of widths, d_model)`` value of ``name`` (``w1``, ``w2`` or
        ``w3``) into the weight's row blocks, which may be sharded DTensors (each rank keeps its
        rows; nothing is communicated)."""
        blocks = [getattr(self, name + suffix) for suffix, _ in self._blocks()]
        ranges = [self._row_ranges(experts) for _, experts in self._blocks()]
        with torch.no_grad():
            for block, value in zip(blocks, split_rows(full.to(blocks[0].dtype), blocks, ranges)):
                get_local_tensor(block).copy_(get_local_tensor(value))

    def _blocks(self) -> List[Tuple[str, List[int]]]:
        """(parameter suffix, experts) of each row block: one block, or trained and frozen."""
        if not self.frozen_experts:
            return [("", list(range(self.num_experts)))]
        return [("", self.trained_experts), ("_frozen", self.frozen_experts)]

    def _weights(self) -> List[torch.Tensor]:
        return [getattr(self, n + s) for s, _ in self._blocks() for n in ("w1", "w2", "w3")]

    def _row_ranges(self, experts: Sequence[int]) -> RowRanges:
        return [(self.offsets[e], self.offsets[e + 1]) for e in experts]

    def _local_blocks(self, experts: Optional[Sequence[int]] = None):
        """(experts, w1, w2, w3) of each row block, restricted to ``experts`` (default: all),
        as local tensors; blocks without any of them are left out."""
        keep = set(range(self.num_experts) if experts is None else experts)
        out = []
        for suffix, block in self._blocks():
            ws = [get_local_tensor(getattr(self, n + suffix)) for n in ("w1", "w2", "w3")]
            on = [e for e in block if e in keep]
            if not on:
                continue
            if len(on) < len(block):  # some switched off: their rows leave the matmuls
                starts = dict(zip(block, itertools.accumulate(
                    [0] + [self.expert_widths[e] for e in block]
                )))  # fmt: skip
                rows = torch.cat(
                    [torch.arange(starts[e], starts[e] + self.expert_widths[e]) for e in on]
                ).to(ws[0].device)
                ws = [w.index_select(0, rows) for w in ws]
            out.append((on, *ws))
        return out

    def forward_dense(
        self,
        x: torch.Tensor,
        probs: torch.Tensor,
        experts: Optional[Sequence[int]] = None,
        batch_shape: Optional[torch.Size] = None,
    ) -> torch.Tensor:
        """All ``experts`` (default: all) on all tokens. ``x``: ``(N, d_model)``, ``probs``:
        ``(N, len(experts))``, the router probability of each of those experts; ``batch_shape``
        is the leading shape of the layer input (reported to probes).

        The up-projections are two matmuls over the concatenated width of each row block (one
        block, or the trained and the frozen rows); the down-projection runs per expert on a view
        of its activation columns, and the router probability scales that expert's ``(N,
        d_model)`` output. Scaling the outputs rather than the ``(N, sum of widths)`` activations
        keeps the extra elementwise work (forward and backward) small.
        """
        experts = list(range(self.num_experts)) if experts is None else list(experts)
        per_expert = {}
        for on, w1, w2, w3 in self._local_blocks(experts):
            x = x.type_as(w1)
            widths = [self.expert_widths[e] for e in on]
            act = F.silu(x @ w1.t()) * (x @ w3.t())
            if len(on) == 1:  # a split of one piece would still cost a copy in backward
                per_expert[on[0]] = (act, w2)
            else:
                per_expert.update(zip(on, zip(act.split(widths, dim=1), w2.split(widths, dim=0))))
        if self._probing():
            for i, e in enumerate(experts):
                routing = ExpertRouting(e, None, probs[:, i], batch_shape or x.shape[:-1])
                self.probe(per_expert[e][0], routing)
        probs = probs.to(x.dtype)
        out: Optional[torch.Tensor] = None
        for i, e in enumerate(experts):
            act_e, w2_e = per_expert[e]
            p_e = probs[:, i : i + 1]
            y_e = act_e @ w2_e
            out = y_e * p_e if out is None else torch.addcmul(out, y_e, p_e)
        assert out is not None
        return out

    def tokens_per_expert(
        self, expert_indices: torch.Tensor, active: Optional[Sequence[int]] = None
    ) -> List[int]:
        """How many (token, slot) pairs go to each expert: counted, or assumed (see
        :attr:`assumed_routing`) over the ``active`` experts (default: all)."""
        if self.assumed_routing is None:
            return torch.bincount(expert_indices.reshape(-1), minlength=self.num_experts).tolist()
        n, top_k = expert_indices.shape
        active = list(range(self.num_experts)) if active is None else list(active)
        counts = [0] * self.num_experts
        if self.assumed_routing == "worst":
            for e in sorted(active, key=lambda e: -self.expert_widths[e])[:top_k]:
                counts[e] = n
        elif self.assumed_routing == "balanced":
            base, extra = divmod(n * top_k, len(active))
            for i, e in enumerate(active):
                counts[e] = base + (i < extra)
        else:
            raise OLMoConfigurationError(
                f"assumed routing {self.assumed_routing!r}: use 'balanced' or 'worst'"
            )
        return counts

    def forward_routed(
        self,
        x: torch.Tensor,
        expert_weights: torch.Tensor,
        expert_indices: torch.Tensor,
        batch_shape: Optional[torch.Size] = None,
        active: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """Each expert on the tokens routed to it. ``expert_*``: ``(N, top_k)``, expert ids of
        the ``active`` experts (default: all); ``batch_shape`` is the leading shape of the layer
        input (reported to probes).

        The (token, slot) pairs are sorted by expert once, so one gather gives every expert a
        contiguous block of its tokens and each expert is three plain matmuls on that block. The
        outputs are put back in (token, slot) order with one more gather and summed over the slots
        in slot order, so no scatter-add is needed and the result does not depend on expert ids.
        """
        per_expert = {}
        for on, w1, w2, w3 in self._local_blocks():
            widths = [self.expert_widths[e] for e in on]
            per_expert.update(zip(on, zip(w1.split(widths), w2.split(widths), w3.split(widths))))
        x = x.type_as(w1)
        n, top_k = expert_indices.shape
        flat = expert_indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = self.tokens_per_expert(expert_indices, active)
        tokens = order.div(top_k, rounding_mode="floor")
        x_sorted = x.index_select(0, tokens)
        p_sorted = expert_weights.reshape(-1).index_select(0, order)
        w_sorted = p_sorted.to(x.dtype).unsqueeze(-1)
        probing = self._probing()
        outs = []
        # split() views the weights per expert with one backward node (a single cat of the
        # gradients), where slicing per expert would add a full-size zero tensor per expert.
        blocks = zip(x_sorted.split(counts), w_sorted.split(counts))
        start = 0
        for e, (xe, we) in enumerate(blocks):
            w1e, w2e, w3e = per_expert[e]
            count = counts[e]
            if count == 0:
                continue
            act = F.silu(F.linear(xe, w1e)) * F.linear(xe, w3e)
            if probing:
                end = start + count
                routing = ExpertRouting(
                    e, tokens[start:end], p_sorted[start:end], batch_shape or x.shape[:-1]
                )
                self.probe(act, routing)
            start += count
            outs.append((act @ w2e) * we)
        if not outs:  # no tokens
            return x.new_zeros(x.shape)
        out_sorted = torch.cat(outs) if len(outs) > 1 else outs[0]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return out_sorted.index_select(0, inverse).view(n, top_k, -1).sum(dim=1)


def _fused_state(module: VariableMoEMLP, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: trained and frozen rows shown as one fused ``w1/w2/w3`` each."""
    del local_metadata
    if not module.frozen_experts:
        return
    ranges = [module._row_ranges(experts) for _, experts in module._blocks()]
    for name in ("w1", "w2", "w3"):
        blocks = [state_dict[prefix + name], state_dict.pop(prefix + name + "_frozen")]
        state_dict[prefix + name] = fuse_rows(blocks, ranges, module.offsets[-1])


def _split_state(module: VariableMoEMLP, state_dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: a fused ``w1/w2/w3`` cut into trained and frozen rows."""
    error_msgs = args[-1]
    if not module.frozen_experts:
        return
    ranges = [module._row_ranges(experts) for _, experts in module._blocks()]
    for name in ("w1", "w2", "w3"):
        fused = state_dict.get(prefix + name)
        if fused is None:
            continue
        if tuple(fused.shape) != (module.offsets[-1], module.d_model):
            error_msgs.append(
                f"size mismatch for {prefix}{name}: copying a param with shape "
                f"{tuple(fused.shape)}, the shape in current model is "
                f"{(module.offsets[-1], module.d_model)}."
            )
            del state_dict[prefix + name]
            continue
        blocks = [getattr(module, name + suffix) for suffix, _ in module._blocks()]
        trained, frozen = split_rows(fused, blocks, ranges)
        state_dict[prefix + name], state_dict[prefix + name + "_frozen"] = trained, frozen


class VariableExperts(ParallelMLPBase):
    """Dispatches routed tokens to :class:`VariableMoEMLP` (no expert parallelism).

    The router's expert indices count the switched-on experts (all experts unless some opted out);
    :meth:`set_active_experts` tells this module which expert ids they are.
    """

    mlp: VariableMoEMLP

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.active_experts: List[int] = list(range(self.mlp.num_experts))
        self._active_index: Optional[torch.Tensor] = None

    def set_active_experts(self, experts: Sequence[int]) -> None:
        self.active_experts = list(experts)
        all_on = len(self.active_experts) == self.mlp.num_experts
        self._active_index = None if all_on else torch.tensor(self.active_experts)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        expert_weights: torch.Tensor,
        expert_indices: torch.Tensor,
        batch_size_per_expert: torch.Tensor,
    ) -> torch.Tensor:
        del batch_size_per_expert
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        top_k = expert_indices.shape[-1]
        weights = expert_weights.reshape(-1, top_k)
        indices = expert_indices.reshape(-1, top_k)
        active = len(self.active_experts)
        if top_k == active:
            probs = torch.zeros(x2.shape[0], active, device=x.device, dtype=weights.dtype)
            probs = probs.scatter(1, indices, weights)
            experts = None if self._active_index is None else self.active_experts
            out = self.mlp.forward_dense(x2, probs, experts, batch_shape=shape[:-1])
        else:
            if self._active_index is not None:
                indices = self._active_index.to(indices.device)[indices]
            out = self.mlp.forward_routed(
                x2, weights, indices, batch_shape=shape[:-1], active=self.active_experts
            )
        return out.reshape(shape).to(x.dtype)


class VariableMoE(MoEBase):
    """OLMo-core MoE layer (stock router and losses) over experts of different widths."""

    experts: VariableExperts
    router: FlexRouter

    def __init__(
        self, *, router: MoERouterConfig, opt_out: Optional[Sequence[int]] = None, **kwargs
    ):
        super().__init__(router=FlexRouterConfig.from_router_config(router), **kwargs)
        if opt_out:
            self.set_opt_out(opt_out)

    def _init_parallel_mlp(  # type: ignore[override]
        self,
        *,
        d_model: int,
        num_experts: int,
        hidden_size: int,
        expert_widths: Sequence[int],
        dtype: torch.dtype = torch.float32,
        init_device: str = "cpu",
        cache: Optional[BufferCache] = None,
    ) -> VariableExperts:
        del hidden_size
        if len(expert_widths) != num_experts:
            raise OLMoConfigurationError(
                f"{len(expert_widths)} expert widths for {num_experts} experts"
            )
        mlp = VariableMoEMLP(
            d_model=d_model, expert_widths=expert_widths, dtype=dtype, init_device=init_device
        )
        return VariableExperts(mlp=mlp, top_k=self.router.top_k, cache=cache)

    @property
    def expert_widths(self) -> List[int]:
        return list(self.experts.mlp.expert_widths)

    @property
    def opt_out(self) -> List[int]:
        """Experts currently switched off."""
        return self.router.opt_out

    def set_opt_out(self, experts: Sequence[int]) -> None:
        """Switch off ``experts`` (ids; empty switches all back on): the layer then computes
        exactly what it would without those experts, with ``top_k = min(top_k, remaining)``."""
        self.router.set_opt_out(experts)
        self.experts.set_active_experts(self.router.active_experts)
