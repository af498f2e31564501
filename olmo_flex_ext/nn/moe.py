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
    """The experts' weights, stored like OLMo-core's dropless MLP but with ragged widths."""

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
        self.probe = ExpertProbe()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.w1, self.w2, self.w3):
            nn.init.trunc_normal_(w, std=0.02, a=-0.06, b=0.06)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, expert_widths={self.expert_widths}"

    def _apply_ep_refused(self, *args, **kwargs):
        raise OLMoConfigurationError(
            "expert/tensor parallelism is not supported for variable-width experts; "
            "use data parallelism (FSDP, HSDP or DDP) instead"
        )

    apply_ep = _apply_ep_refused
    apply_tp = _apply_ep_refused

    def expert_slice(self, expert: int) -> slice:
        return slice(self.offsets[expert], self.offsets[expert + 1])

    def _probing(self) -> bool:
        return bool(self.probe._forward_hooks or self.probe._forward_pre_hooks)

    def expert_rows(self, experts: Sequence[int]) -> torch.Tensor:
        """Row indices of ``w1/w2/w3`` that belong to ``experts``, in that order."""
        return torch.cat([torch.arange(self.offsets[e], self.offsets[e + 1]) for e in experts])

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

        The up-projections are two matmuls over the concatenated width; the down-projection runs
        per expert on a view of its activation columns, and the router probability scales that
        expert's ``(N, d_model)`` output. Scaling the outputs rather than the ``(N, sum of
        widths)`` activations keeps the extra elementwise work (forward and backward) small.
        """
        w1, w2, w3 = (get_local_tensor(w) for w in (self.w1, self.w2, self.w3))
        experts = list(range(self.num_experts)) if experts is None else list(experts)
        if len(experts) < self.num_experts:  # some switched off: their rows leave the matmuls
            rows = self.expert_rows(experts).to(w1.device)
            w1, w2, w3 = (w.index_select(0, rows) for w in (w1, w2, w3))
        widths = [self.expert_widths[e] for e in experts]
        x = x.type_as(w1)
        act = F.silu(x @ w1.t()) * (x @ w3.t())
        acts = act.split(widths, dim=1)
        if self._probing():
            for i, (e, a) in enumerate(zip(experts, acts)):
                self.probe(a, ExpertRouting(e, None, probs[:, i], batch_shape or x.shape[:-1]))
        probs = probs.to(act.dtype)
        out: Optional[torch.Tensor] = None
        for i, w2_e in enumerate(w2.split(widths, dim=0)):
            p_e = probs[:, i : i + 1]
            y_e = acts[i] @ w2_e
            out = y_e * p_e if out is None else torch.addcmul(out, y_e, p_e)
        assert out is not None
        return out

    def forward_routed(
        self,
        x: torch.Tensor,
        expert_weights: torch.Tensor,
        expert_indices: torch.Tensor,
        batch_shape: Optional[torch.Size] = None,
    ) -> torch.Tensor:
        """Each expert on the tokens routed to it. ``expert_*``: ``(N, top_k)``, expert ids;
        ``batch_shape`` is the leading shape of the layer input (reported to probes).

        The (token, slot) pairs are sorted by expert once, so one gather gives every expert a
        contiguous block of its tokens and each expert is three plain matmuls on that block. The
        outputs are put back in (token, slot) order with one more gather and summed over the slots
        in slot order, so no scatter-add is needed and the result does not depend on expert ids.
        """
        w1, w2, w3 = (get_local_tensor(w) for w in (self.w1, self.w2, self.w3))
        x = x.type_as(w1)
        n, top_k = expert_indices.shape
        flat = expert_indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        tokens = order.div(top_k, rounding_mode="floor")
        x_sorted = x.index_select(0, tokens)
        p_sorted = expert_weights.reshape(-1).index_select(0, order)
        w_sorted = p_sorted.to(x.dtype).unsqueeze(-1)
        probing = self._probing()
        outs = []
        # split() views the weights per expert with one backward node (a single cat of the
        # gradients), where slicing per expert would add a full-size zero tensor per expert.
        blocks = zip(
            w1.split(self.expert_widths),
            w2.split(self.expert_widths),
            w3.split(self.expert_widths),
            x_sorted.split(counts),
            w_sorted.split(counts),
        )
        start = 0
        for e, (w1e, w2e, w3e, xe, we) in enumerate(blocks):
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
            out = self.mlp.forward_routed(x2, weights, indices, batch_shape=shape[:-1])
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
