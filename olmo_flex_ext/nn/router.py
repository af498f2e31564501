"""FlexOlmo's router: OLMo-core's linear router plus an optional expert bias and expert opt-out.

:class:`FlexRouter` subclasses OLMo-core's :class:`~olmo_core.nn.moe.router.MoELinearRouter` and
keeps its weight (``router.weight``, ``num_experts * d_model`` flat, one row per expert), so
checkpoints made with the stock router load unchanged. It adds:

- **Expert bias** (FlexOlmo, optional, ``FlexRouterConfig(expert_bias=True)``): a learnable parameter
  ``router.expert_bias`` with one entry per domain expert (experts ``1..N-1``). The logit of domain
  expert ``e`` gets ``min(expert_bias[e - 1], 0)``: a domain expert can be made less likely than the
  public expert 0 (whose bias is fixed at 0), never more likely.
- **Opt-out** (:meth:`FlexRouter.set_opt_out`): switched-off experts leave routing altogether. The
  logits, softmax, top-k and auxiliary losses are computed over the active experts only, with
  ``top_k = min(configured top_k, active experts)``, so the router computes exactly what the router
  of a model built without those experts computes. Indices it returns count active experts
  (``0..active-1``); :attr:`FlexRouter.active_experts` maps them back to expert ids.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from olmo_core.distributed.utils import get_local_tensor, hide_from_torch, unhide_from_torch
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.moe.loss import MoELoadBalancingLossGranularity
from olmo_core.nn.moe.router import MoELinearRouter, MoERouterConfig, MoERouterType

__all__ = ["FlexRouterConfig", "FlexRouter", "active_experts"]


def active_experts(num_experts: int, opt_out: Optional[Sequence[int]]) -> List[int]:
    """The experts that stay on, ascending; raises naming the problem if ``opt_out`` is unusable."""
    off = list(opt_out or [])
    bad = [
        e for e in off if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e < num_experts
    ]
    if bad:
        raise OLMoConfigurationError(
            f"opt_out={off} names expert {bad[0]!r}, but the experts are numbered 0..{num_experts - 1}"
        )
    if len(set(off)) != len(off):
        raise OLMoConfigurationError(f"opt_out={off} names an expert twice")
    active = [e for e in range(num_experts) if e not in set(off)]
    if not active:
        raise OLMoConfigurationError(
            f"opt_out={off} switches off all {num_experts} experts; keep at least one"
        )
    return active


@dataclass
class FlexRouterConfig(MoERouterConfig):
    """OLMo-core's router config plus FlexOlmo's optional learnable expert bias (clamped <= 0)."""

    expert_bias: bool = False

    @classmethod
    def from_router_config(cls, config: MoERouterConfig) -> "FlexRouterConfig":
        """The same settings as ``config`` (a stock router config, or already a flex one)."""
        if isinstance(config, FlexRouterConfig):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(MoERouterConfig)})

    def num_params(self, d_model: int, num_experts: int) -> int:
        bias = num_experts - 1 if self.expert_bias else 0
        return super().num_params(d_model, num_experts) + bias

    def build(  # type: ignore[override]
        self,
        d_model: int,
        num_experts,
        *,
        lb_loss_weight: Optional[float] = None,
        lb_loss_granularity: MoELoadBalancingLossGranularity = MoELoadBalancingLossGranularity.local_batch,
        z_loss_weight: Optional[float] = None,
        dtype: Optional[torch.dtype] = None,
        init_device: str = "cpu",
    ) -> "FlexRouter":
        if self.name != MoERouterType.default:
            raise OLMoConfigurationError(
                f"router name {self.name!r} is not supported; FlexRouter extends the default router"
            )
        kwargs = self.as_dict(exclude_none=True, recurse=False)
        kwargs.pop("name")
        kwargs.update(
            d_model=d_model,
            num_experts=num_experts,
            init_device=init_device,
            lb_loss_weight=lb_loss_weight,
            lb_loss_granularity=lb_loss_granularity,
            z_loss_weight=z_loss_weight,
        )
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype.as_pt()
        elif dtype is not None:
            kwargs["dtype"] = dtype
        try:
            return FlexRouter(**kwargs)
        except TypeError as e:
            raise OLMoConfigurationError(f"invalid options for FlexRouterConfig: {e}") from e


class FlexRouter(MoELinearRouter):
    """OLMo-core's linear router with FlexOlmo's expert bias and expert opt-out (see module doc).

    ``num_experts`` and ``top_k`` are what routing sees (the active experts); ``total_experts`` and
    ``max_top_k`` are the model's.
    """

    def __init__(self, *, expert_bias: bool = False, init_device: str = "cpu", **kwargs):
        super().__init__(init_device=init_device, **kwargs)
        self.total_experts = self.num_experts
        self.max_top_k = self.top_k
        self.active_experts: List[int] = list(range(self.total_experts))
        self._active_index: Optional[torch.Tensor] = None
        if expert_bias:
            self.expert_bias: Optional[nn.Parameter] = nn.Parameter(
                torch.zeros(self.total_experts - 1, device=init_device)
            )
        else:
            self.register_parameter("expert_bias", None)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "expert_bias", None) is not None:
            nn.init.zeros_(self.expert_bias)

    def extra_repr(self) -> str:
        s = f"in_features={self.d_model}, num_experts={self.total_experts}"
        if self.expert_bias is not None:
            s += ", expert_bias=True"
        if len(self.active_experts) < self.total_experts:
            s += f", active_experts={self.active_experts}"
        return s

    @property
    def opt_out(self) -> List[int]:
        """Experts currently switched off."""
        return [e for e in range(self.total_experts) if e not in set(self.active_experts)]

    def set_opt_out(self, experts: Sequence[int]) -> None:
        """Switch off ``experts`` (expert ids; an empty list switches every expert back on)."""
        active = active_experts(self.total_experts, experts)
        if self.bias_gamma is not None and len(active) < self.total_experts:
            raise OLMoConfigurationError(
                "opt-out cannot be combined with router.bias_gamma (auxiliary-loss-free balancing)"
            )
        self.active_experts = active
        self.num_experts = len(active)
        self.top_k = min(self.max_top_k, len(active))
        self._active_index = None if len(active) == self.total_experts else torch.tensor(active)
        # Metrics accumulate over what routing sees; start them afresh at the new size.
        self._batch_size_per_expert = hide_from_torch(
            torch.zeros(self.num_experts, device=self.device)
        )

    def effective_bias(self) -> Optional[torch.Tensor]:
        """The bias added to each expert's logit (all experts, public first), or ``None``."""
        if self.expert_bias is None:
            return None
        return F.pad(get_local_tensor(self.expert_bias).float().clamp(max=0.0), (1, 0))

    _METRICS = ("_batch_size_per_expert", "_score_bias_batch_size_per_expert",
                "_load_balancing_loss", "_z_loss")  # fmt: skip

    def forward(self, x: torch.Tensor, **kwargs):
        """OLMo-core's routing; when activation checkpointing recomputes it during backward, the
        metrics it accumulates (tokens per expert, auxiliary losses) are put back as they were, so
        a batch is counted once (losses and gradients do not depend on them)."""
        if torch.compiler.is_compiling():  # compiled recomputation does not rerun this code
            return super().forward(x, **kwargs)
        # The copies are taken in the forward too: selective checkpointing replays exactly the
        # ops of the forward.
        saved = {n: getattr(self, n) for n in self._METRICS}
        saved = {n: None if v is None else hide_from_torch(unhide_from_torch(v).clone())
                 for n, v in saved.items()}  # fmt: skip
        try:
            return super().forward(x, **kwargs)
        finally:  # also when a recomputation stops early once it has what backward needs
            if torch._C._current_graph_task_id() != -1:  # inside backward: a recomputation
                for name, value in saved.items():
                    setattr(self, name, value)

    def get_expert_logits(self, x: torch.Tensor) -> torch.Tensor:
        weight = get_local_tensor(self.weight).view(self.total_experts, self.d_model)
        index = self._active_index
        if index is not None:
            index = index.to(weight.device)
            weight = weight.index_select(0, index)
        logits = F.linear(x.float(), weight.float())
        bias = self.effective_bias()
        if bias is not None:
            logits = logits + (bias if index is None else bias.index_select(0, index))
        return logits
