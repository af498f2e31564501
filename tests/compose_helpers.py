"""Tiny experts trained apart from one public model, and an independent reference MoE layer."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from olmo_flex_ext.checkpoint import save_model
from olmo_flex_ext.data.synthetic import bigram_tokens
from olmo_flex_ext.models import tiny_flex

PUBLIC = 96
D_MODEL = 64


def _moe(model, i):
    return model.blocks[str(i)].feed_forward_moe


def grow_expert(public: torch.nn.Module, widths, seed: int):
    """A 2-expert model with ``public``'s shared weights, public rows and public router row, and a
    fresh domain expert of ``widths`` (one int, or one per layer)."""
    per_layer = (
        [[PUBLIC, w] for w in widths] if isinstance(widths, (list, tuple)) else [PUBLIC, widths]
    )
    torch.manual_seed(seed)
    model = tiny_flex(per_layer, d_model=D_MODEL).build(init_device="cpu")
    with torch.no_grad():
        own = model.state_dict()
        for name, t in public.state_dict().items():
            if ".experts.mlp." in name:
                own[name][:PUBLIC].copy_(t[:PUBLIC])
            elif name.endswith("router.weight"):
                own[name][:D_MODEL].copy_(t[:D_MODEL])
            else:
                own[name].copy_(t)
    return model


def train_domain_expert(model, seed: int, steps: int = 4, lr: float = 0.05):
    """A few SGD steps on the domain expert's rows and router row only (public rows untouched)."""
    params = []
    for name, p in model.named_parameters():
        if ".experts.mlp." in name or name.endswith("router.weight"):
            params.append((name, p))
        else:
            p.requires_grad_(False)
    opt = torch.optim.SGD([p for _, p in params], lr=lr)
    data = torch.from_numpy(bigram_tokens(steps * 4 * 33, 512, seed=seed)).view(steps, 4, 33)
    model.train()
    for batch in data:
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        for name, p in params:  # keep the public expert frozen, as FlexOlmo does
            p.grad[: PUBLIC if ".experts." in name else D_MODEL].zero_()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def make_experts(root: Path, widths: Sequence) -> List[Path]:
    """Checkpoints of experts of ``widths`` trained apart from one public model."""
    torch.manual_seed(0)
    public = tiny_flex([PUBLIC, PUBLIC], d_model=D_MODEL).build(init_device="cpu")
    paths = []
    for k, w in enumerate(widths):
        model = train_domain_expert(grow_expert(public, w, seed=10 + k), seed=100 + k)
        path = root / f"expert{k}"
        per_layer = [[PUBLIC, x] for x in w] if isinstance(w, (list, tuple)) else [PUBLIC, w]
        save_model(path, tiny_flex(per_layer, d_model=D_MODEL), model.state_dict())
        paths.append(path)
    return paths


class ReferenceMoE(nn.Module):
    """A merged MoE layer computed by hand from the input experts' weights: softmax router over
    the rows, top-k, and a sum of separately computed SwiGLU experts weighted by probability."""

    def __init__(self, rows: torch.Tensor, experts: List[Dict[str, torch.Tensor]], top_k: int):
        super().__init__()
        self.rows, self.experts, self.top_k = rows, experts, top_k

    def forward(self, x, **kwargs):
        probs = (x.float() @ self.rows.t()).softmax(-1)
        top = probs.topk(self.top_k, dim=-1).indices
        mask = torch.zeros_like(probs).scatter(-1, top, 1.0)
        out = torch.zeros_like(x)
        for e, w in enumerate(self.experts):
            y = (F.silu(x @ w["w1"].t()) * (x @ w["w3"].t())) @ w["w2"]
            out = out + (mask[..., e] * probs[..., e]).unsqueeze(-1) * y
        return out


def reference_merged_model(paths: Sequence[Path], top_k: int):
    """Input 0's model with every MoE layer replaced by :class:`ReferenceMoE` built from the
    inputs' checkpoints (public expert from input 0, domain expert k from input k)."""
    from olmo_flex_ext import load_model

    models = [load_model(p) for p in paths]
    base = models[0]
    for i in range(len(base.blocks)):
        rows = [_moe(base, i).router.weight.view(2, D_MODEL)[0]]
        experts = []
        for k, m in enumerate(models):
            mlp = _moe(m, i).experts.mlp
            pub, dom = mlp.expert_widths
            if k == 0:
                experts.append({n: getattr(mlp, n)[:pub].detach() for n in ("w1", "w2", "w3")})
            experts.append({n: getattr(mlp, n)[pub:].detach() for n in ("w1", "w2", "w3")})
            rows.append(_moe(m, i).router.weight.view(2, D_MODEL)[1])
        base.blocks[str(i)].feed_forward_moe = ReferenceMoE(
            torch.stack(rows).detach(), experts, top_k
        )
    return base
