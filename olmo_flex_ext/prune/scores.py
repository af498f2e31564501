"""The importance scores file and the identity of the model it was computed on.

A scores file is one safetensors file: key ``layer{i}.expert{e}`` -> float32 vector of that expert's
width (larger = more important), plus string metadata: ``method``, ``calibration`` (JSON: token
files with their fingerprints, dtype, sequence length, number of sequences), ``tokens``,
``sequences``, ``expert_widths`` (JSON, per layer), ``model_fingerprint`` and ``source``.

The model fingerprint hashes the expert widths of every layer and every router's weights (rounded
to bfloat16, so float32 and bfloat16 copies of a model agree). Routers are small, are read without
loading the model, and differ between any two trained models, so scores computed on another model
are refused even when all shapes match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..errors import UserError

__all__ = [
    "FORMAT",
    "ImportanceScores",
    "ScoresError",
    "router_weight_name",
    "model_fingerprint",
    "checkpoint_fingerprint",
    "module_fingerprint",
    "top_neurons",
    "topk_overlap",
]

FORMAT = "olmo-flex-importance/1"


class ScoresError(UserError):
    """A scores file that cannot be used for the model at hand."""


def router_weight_name(layer: int) -> str:
    return f"blocks.{layer}.feed_forward_moe.router.weight"


def model_fingerprint(
    widths: Sequence[Sequence[int]], router: Callable[[int], torch.Tensor]
) -> str:
    """sha256 (16 hex digits) of the per-layer expert widths and each layer's router weights."""
    h = hashlib.sha256(json.dumps([list(w) for w in widths]).encode())
    for layer in range(len(widths)):
        w = router(layer).detach().to("cpu", torch.bfloat16).view(torch.int16)
        h.update(w.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_fingerprint(path: Union[str, Path]) -> str:
    """The fingerprint of a checkpoint, reading only its routers."""
    from ..checkpoint import iter_tensors, read_model_config
    from ..models import expert_widths_per_layer

    widths = expert_widths_per_layer(read_model_config(path))
    routers = dict(iter_tensors(path, [router_weight_name(i) for i in range(len(widths))]))
    return model_fingerprint(widths, lambda i: routers[router_weight_name(i)])


def module_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of a built (unsharded) model."""
    blocks = list(model.blocks.values())  # type: ignore[union-attr]
    widths = [b.feed_forward_moe.experts.mlp.expert_widths for b in blocks]
    return model_fingerprint(widths, lambda i: blocks[i].feed_forward_moe.router.weight)


@dataclass
class ImportanceScores:
    """Per layer, per expert: one float32 score per neuron; plus string metadata."""

    scores: List[List[torch.Tensor]]
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def widths(self) -> List[List[int]]:
        return [[int(s.numel()) for s in layer] for layer in self.scores]

    @property
    def num_layers(self) -> int:
        return len(self.scores)

    @property
    def fingerprint(self) -> Optional[str]:
        return self.metadata.get("model_fingerprint")

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {
            f"layer{i}.expert{e}": s.detach().to("cpu", torch.float32).contiguous()
            for i, layer in enumerate(self.scores)
            for e, s in enumerate(layer)
        }

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file in the same directory, then rename)."""
        from safetensors.torch import save_file

        from ..atomic import atomic_file

        meta = {"format": FORMAT, **{k: str(v) for k, v in self.metadata.items()}}
        with atomic_file(path) as tmp:
            save_file(self.tensors(), str(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ImportanceScores":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ScoresError(
                f"scores file {path} does not exist; make one with `olmo-flex importance`"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for a damaged file
            raise ScoresError(f"{path} is not a readable safetensors scores file ({e})") from e
        if meta.get("format") != FORMAT:
            raise ScoresError(
                f"{path} is not an importance scores file (format {meta.get('format')!r}, "
                f"expected {FORMAT!r}); make one with `olmo-flex importance`"
            )
        layers: Dict[int, Dict[int, torch.Tensor]] = {}
        try:
            for key, value in tensors.items():
                layer, expert = key.removeprefix("layer").split(".expert")
                layers.setdefault(int(layer), {})[int(expert)] = value.float()
            scores = [[layers[i][e] for e in range(len(layers[i]))] for i in range(len(layers))]
        except (ValueError, KeyError) as e:
            raise ScoresError(
                f"{path} does not hold one vector per layer and expert (layer{{i}}.expert{{e}}): "
                f"{type(e).__name__}: {e}; make it again with `olmo-flex importance`"
            ) from None
        for i, layer in enumerate(scores):
            for e, s in enumerate(layer):
                bad = ~torch.isfinite(s) | (s < 0)
                if s.dim() != 1 or bad.any():
                    what = (
                        "is not a vector"
                        if s.dim() != 1
                        else (
                            f"has a NaN, infinite or negative score at neuron {int(bad.nonzero()[0])}"
                        )
                    )
                    raise ScoresError(
                        f"{path}: layer{i}.expert{e} {what}; the file is damaged, make it again "
                        "with `olmo-flex importance`"
                    )
        return cls(scores, meta)

    def check_model(
        self,
        widths: Sequence[Sequence[int]],
        fingerprint: Optional[str],
        *,
        what: str = "the model",
    ) -> None:
        """Refuse scores whose shapes or model fingerprint do not match ``what``."""
        widths = [list(w) for w in widths]
        if self.widths != widths:
            raise ScoresError(
                f"the scores are for a model with expert widths {_short(self.widths)} but {what} "
                f"has {_short(widths)}; compute scores on this model with `olmo-flex importance`"
            )
        if fingerprint is not None and self.fingerprint != fingerprint:
            raise ScoresError(
                f"the scores were computed on another model (fingerprint {self.fingerprint}, "
                f"{what} has {fingerprint}; source of the scores: {self.metadata.get('source')}); "
                "compute scores on this model with `olmo-flex importance`"
            )

    def normalized(self, how: str = "layer") -> List[List[torch.Tensor]]:
        """Scores made comparable across layers.

        ``layer``: each layer's scores (all its experts together) divided by their sum, so every
        layer holds total importance 1. FlexOlmo blocks normalise the MoE output before the
        residual add, so a layer's effect does not depend on the scale of its activations, which
        grows with depth by orders of magnitude; what is comparable between layers is the share of
        a layer's importance a neuron carries. ``none``: raw scores.
        """
        if how == "none":
            return [[s.double() for s in layer] for layer in self.scores]
        if how != "layer":
            raise UserError(f"unknown normalisation {how!r}; use 'layer' or 'none'")
        out = []
        for layer in self.scores:
            total = float(sum(s.double().sum() for s in layer))
            out.append([s.double() / total if total > 0 else s.double() for s in layer])
        return out


def top_neurons(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the ``width`` highest scores, ascending (ties go to the lower index)."""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    return torch.sort(order[:width]).values


def topk_overlap(a: torch.Tensor, b: torch.Tensor, width: int) -> float:
    """Fraction of the top-``width`` neurons of ``a`` that are also top-``width`` in ``b``."""
    width = min(width, a.numel())
    ia = set(top_neurons(a, width).tolist())
    ib = set(top_neurons(b, width).tolist())
    return len(ia & ib) / width if width else 1.0


def _short(widths: List[List[int]]) -> str:
    if all(w == widths[0] for w in widths):
        return f"{widths[0]} in all {len(widths)} layers"
    return str(widths)


def describe_calibration(meta: Mapping[str, str]) -> str:
    try:
        cal = json.loads(meta.get("calibration", "{}"))
    except json.JSONDecodeError:
        return "?"
    paths = cal.get("paths") or [f["name"] for f in cal.get("files", [])]
    names = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{cal.get('num_seqs')} x {cal.get('seq_len')} tokens from {names}"
