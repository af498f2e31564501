"""The distillation loss: forward KL(teacher || student) from the teacher's top-k, plus CE.

For each predicted position with student logits ``z`` (full vocabulary), teacher top-k ids ``S``
and log-probs ``l`` (normalised over the full vocabulary), at temperature ``T``:

- default, renormalised top-k: the teacher distribution is ``p = softmax(l / T)`` on ``S`` and 0
  elsewhere; ``KL = sum_S p (log p - log q)`` with ``q = softmax(z / T)`` over the full
  vocabulary (so the student is also pushed to move mass off tokens outside ``S``);
- ``rest_bucket``: the teacher's remaining mass ``1 - sum_S exp(l)`` and the student's mass
  outside ``S`` form one extra bucket, ``KL = sum_S p (log p - log q) + p_r log(p_r / q_r)``
  (temperature 1 only: the teacher's tail at another temperature is not known from its top-k).

With ``k`` equal to the vocabulary both are the full KL. The training objective is
``kd_weight * T**2 * KL + ce_weight * CE`` averaged over predicted tokens (never divided by k).

:class:`_TopKKD` computes KL and CE per position in float32 row chunks and writes the logits'
gradient directly, so it never holds more than the logits, their gradient and one chunk of
temporaries: autograd through ``log_softmax`` would keep a second full-vocabulary tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from olmo_core.config import Config
from olmo_core.exceptions import OLMoConfigurationError

__all__ = [
    "KDLossConfig",
    "KDLossOutput",
    "topk_kd_loss",
    "topk_kd_rows",
    "default_chunk_tokens",
    "full_kl",
]


@dataclass
class KDLossConfig(Config):
    """Options of the distillation loss (see the module docstring)."""

    kd_weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    rest_bucket: bool = False
    """Treat the teacher's probability mass outside its top-k as one extra bucket."""
    chunk_tokens: Optional[int] = None
    """Positions whose float32 full-vocabulary temporaries exist at once (default: see
    :func:`default_chunk_tokens`)."""

    def validate(self) -> None:
        if self.temperature <= 0:
            raise OLMoConfigurationError(f"KD temperature must be positive, got {self.temperature}")
        if self.rest_bucket and self.temperature != 1.0:
            raise OLMoConfigurationError(
                "rest_bucket needs temperature 1: the teacher's mass outside its top-k at another "
                "temperature cannot be recovered from top-k log-probs"
            )
        if self.kd_weight < 0 or self.ce_weight < 0 or self.kd_weight + self.ce_weight == 0:
            raise OLMoConfigurationError(
                f"kd_weight={self.kd_weight} and ce_weight={self.ce_weight} must be >= 0 and not both 0"
            )
        if self.chunk_tokens is not None and self.chunk_tokens <= 0:
            raise OLMoConfigurationError("chunk_tokens must be positive")


def default_chunk_tokens(device: torch.device) -> int:
    """Rows of full-vocabulary work at a time: few on CPU, where a chunk that stays in cache
    is faster; many on GPUs, where big kernels are."""
    return 16 if device.type == "cpu" else 4096


class KDLossOutput(NamedTuple):
    loss: torch.Tensor
    """Sum over valid positions of ``kd_weight * T**2 * KL + ce_weight * CE`` (differentiable)."""
    kl: torch.Tensor
    """Sum of KL over valid positions (detached)."""
    ce: torch.Tensor
    """Sum of CE over valid positions (detached)."""
    agree: torch.Tensor
    """Number of valid positions where the student's and teacher's top-1 agree."""


def _teacher_probs(lps: torch.Tensor, temperature: float, rest: bool):
    """(p on S (n, k), log p (n, k), p_rest (n,) or None)."""
    if rest:
        p = lps.exp()
        return p, lps, (1.0 - p.sum(-1)).clamp_min(0.0)
    logp = torch.log_softmax(lps / temperature, dim=-1)
    return logp.exp(), logp, None


def _rest_mass(p_r: torch.Tensor, log_q_r: torch.Tensor) -> torch.Tensor:
    """The teacher's rest mass, 0 where the top-k covers the whole vocabulary (``k == V``): there
    it is only the rounding error of ``1 - sum exp(l)``."""
    return torch.where(torch.isfinite(log_q_r), p_r, torch.zeros_like(p_r))


def _xlogy_diff(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) with 0 where p == 0."""
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))


class _TopKKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, lps, labels, temperature, rest, chunk, with_ce):  # type: ignore[override]
        n = logits.shape[0]
        ctype = torch.promote_types(logits.dtype, torch.float32)
        kl = torch.zeros(n, dtype=ctype, device=logits.device)
        ce = torch.zeros(n, dtype=ctype, device=logits.device)
        agree = torch.zeros(n, dtype=torch.bool, device=logits.device)
        lse_s = torch.zeros(n, dtype=ctype, device=logits.device)
        lse_z = torch.zeros(n, dtype=ctype, device=logits.device)
        log_q_rest = torch.zeros(n if rest else 0, dtype=ctype, device=logits.device)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            z = logits[a:b].to(ctype)
            s = z / temperature if temperature != 1.0 else z
            lp = torch.log_softmax(s, dim=-1)  # one fused pass; a chunk-sized temporary
            lse_s[a:b] = s[:, 0] - lp[:, 0]
            logq = lp.gather(1, ids[a:b])
            p, logp, p_r = _teacher_probs(lps[a:b].to(ctype), temperature, rest)
            kl[a:b] = _xlogy_diff(p, logp, logq).sum(-1)
            if rest:
                outside = s.scatter(1, ids[a:b], float("-inf"))
                log_q_r = torch.logsumexp(outside, dim=-1) - lse_s[a:b]
                log_q_rest[a:b] = log_q_r
                p_r = _rest_mass(p_r, log_q_r)
                kl[a:b] += _xlogy_diff(p_r, p_r.log(), log_q_r)
            if temperature == 1.0:
                lse_z[a:b] = lse_s[a:b]
                ce[a:b] = -lp.gather(1, labels[a:b, None]).squeeze(1)
            else:
                lse_z[a:b] = torch.logsumexp(z, dim=-1)
                ce[a:b] = lse_z[a:b] - z.gather(1, labels[a:b, None]).squeeze(1)
            top_t = ids[a:b].gather(1, lps[a:b].argmax(-1, keepdim=True)).squeeze(1)
            agree[a:b] = lp.argmax(-1) == top_t  # argmax of log q is argmax of z
            del lp
        ctx.save_for_backward(logits, ids, lps, labels, lse_s, lse_z, log_q_rest)
        ctx.temperature, ctx.rest, ctx.chunk, ctx.with_ce = temperature, rest, chunk, with_ce
        ctx.mark_non_differentiable(agree)
        return kl, ce, agree

    @staticmethod
    def backward(ctx, g_kl, g_ce, g_agree):  # type: ignore[override]
        logits, ids, lps, labels, lse_s, lse_z, log_q_rest = ctx.saved_tensors
        T, rest, chunk = ctx.temperature, ctx.rest, ctx.chunk
        grad = torch.empty_like(logits)
        ctype = lse_s.dtype
        for a in range(0, logits.shape[0], chunk):
            b = min(logits.shape[0], a + chunk)
            z = logits[a:b].to(ctype)
            gk, gc = g_kl[a:b, None].to(ctype), g_ce[a:b, None].to(ctype)
            p, _, p_r = _teacher_probs(lps[a:b].to(ctype), T, rest)
            # d KL / d s_i = q_i * c - [i in S] * d_i with q = softmax(s); renormalised: c = 1,
            # d = p. Rest bucket (log q_r = log(1 - sum_S q)): c = sum_S p + p_r - p_r / q_r,
            # d = p - q_S * p_r / q_r.
            if rest:
                p_r = _rest_mass(p_r, log_q_rest[a:b])
                q_r = log_q_rest[a:b, None].exp().clamp_min(torch.finfo(ctype).tiny)
                ratio = torch.where(p_r[:, None] > 0, p_r[:, None] / q_r, torch.zeros_like(q_r))
                c = p.sum(-1, keepdim=True) + p_r[:, None] - ratio
                q_S = (z.gather(1, ids[a:b]) - lse_s[a:b, None]).exp()
                d = p - q_S * ratio
            else:
                c, d = torch.ones_like(gk), p
            # g = grad[a:b] in place when the dtypes agree (no extra full-vocabulary tensor).
            # No branch depends on tensor values, so the loss also runs on fake tensors.
            in_place = grad.dtype == ctype
            g = grad[a:b] if in_place else torch.empty_like(z)
            if T == 1.0:
                torch.sub(z, lse_z[a:b, None], out=g).exp_().mul_(gk * c + gc)
            else:
                torch.div(z, T, out=g).sub_(lse_s[a:b, None]).exp_().mul_(gk * c / T)
                if ctx.with_ce:
                    g.add_((z - lse_z[a:b, None]).exp_().mul_(gc))
            g.scatter_add_(1, ids[a:b], -(gk / T) * d)
            g.scatter_add_(1, labels[a:b, None], -gc)
            if not in_place:
                grad[a:b] = g.to(grad.dtype)
        return grad, None, None, None, None, None, None, None


def topk_kd_rows(
    logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    rest_bucket: bool = False,
    chunk_tokens: Optional[int] = None,
    with_ce_grad: bool = True,
):
    """Per position: (KL (n,), CE (n,), top-1 agreement (n,) bool) for logits (n, V), teacher
    ids (n, k), log-probs (n, k) and labels (n,) (valid ids; mask ignored positions yourself).
    ``with_ce_grad=False`` promises that the CE output gets no gradient (its weight is 0), which
    saves a full-vocabulary pass in backward at temperatures other than 1."""
    return _TopKKD.apply(
        logits,
        teacher_ids.long(),
        teacher_logprobs,
        labels.long(),
        float(temperature),
        bool(rest_bucket),
        int(chunk_tokens or default_chunk_tokens(logits.device)),
        bool(with_ce_grad),
    )


def topk_kd_loss(
    logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    labels: torch.Tensor,
    config: Optional[KDLossConfig] = None,
    *,
    ignore_index: int = -100,
) -> KDLossOutput:
    """Summed KD objective over the positions whose label is not ``ignore_index``.
    Shapes: logits (..., V), teacher ids/log-probs (..., k), labels (...)."""
    config = config or KDLossConfig()
    V, k = logits.shape[-1], teacher_ids.shape[-1]
    logits, labels = logits.reshape(-1, V), labels.reshape(-1)
    valid = labels != ignore_index
    kl, ce, agree = topk_kd_rows(
        logits,
        teacher_ids.reshape(-1, k),
        teacher_logprobs.reshape(-1, k),
        torch.where(valid, labels, torch.zeros_like(labels)),
        temperature=config.temperature,
        rest_bucket=config.rest_bucket,
        chunk_tokens=config.chunk_tokens,
        with_ce_grad=config.ce_weight != 0,
    )
    mask = valid.to(kl.dtype)
    kl_sum, ce_sum = (kl * mask).sum(), (ce * mask).sum()
    loss = config.kd_weight * config.temperature**2 * kl_sum + config.ce_weight * ce_sum
    return KDLossOutput(loss, kl_sum.detach(), ce_sum.detach(), (agree & valid).sum())


def full_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of the full-vocabulary KL(teacher || student), for evaluation."""
    V = student_logits.shape[-1]
    return F.kl_div(
        F.log_softmax(student_logits.reshape(-1, V).float(), -1),
        F.log_softmax(teacher_logits.reshape(-1, V).float(), -1),
        log_target=True,
        reduction="batchmean",
    )
