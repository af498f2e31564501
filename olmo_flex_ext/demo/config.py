"""The demo's settings: model size, step counts, learning rates, widths, evaluation sizes.

:func:`demo_config` gives the two presets (the full demo and the shortened ``--quick`` one CI runs).
Every setting that changes a result is part of :func:`identity`, which ``DIR/demo.json`` records;
a stage reruns when the settings it was made from change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .data.corpus import DemoDataConfig

__all__ = ["RunSettings", "DemoConfig", "demo_config", "identity", "DOMAINS"]

DOMAINS = ("general", "math", "code")
"""Domain embeddings, in router-row order: the public expert's domain first."""


@dataclass
class RunSettings:
    """One training run: steps of ``batch_seqs x seq_len`` tokens, peak learning rate (AdamW,
    cosine decay after a linear warmup), checkpoint interval."""

    steps: int
    lr: float
    warmup_steps: int = 20
    save_interval: int = 50


@dataclass
class DemoConfig:
    """Sizes and step counts of a demo run."""

    quick: bool
    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 4
    public_width: int = 384
    """MLP width of the public model (and of each expert upcycled from it)."""
    seq_len: int = 64
    batch_seqs: int = 32
    public: RunSettings = field(default_factory=lambda: RunSettings(400, 3e-3))
    """The public model, on general text."""
    expert: RunSettings = field(default_factory=lambda: RunSettings(400, 5e-3))
    """The math expert (only its MLP rows train; its router row and expert bias stay the domain
    router fitted on the public model, see ``train_expert_router``)."""
    expert_with_public: bool = True
    """Train each domain expert on its domain's data and the general (public) corpus together,
    in proportion to their tokens (FlexOlmo's data constraint allows it: public data is
    everyone's); else on the domain's data only. With the mix the expert learns to leave the
    tokens its router gives it a little weight on (general text, other domains) as the public
    model has them: docs/composition.md has the numbers."""
    train_expert_router: bool = False
    """Also train each domain expert's router row and expert bias (FlexOlmo's expert training),
    instead of keeping the domain router fixed."""
    width_fractions: List[float] = field(default_factory=lambda: [0.75, 0.5, 0.1875])
    """Pruned math-expert widths as fractions of the full width (the seed's 8192, 5504 and 2048 of
    11008 are 74%, 50% and 19%), rounded to ``width_multiple``."""
    width_multiple: int = 8
    """Pruned widths are multiples of this (8 of 384 is about 128 of 11008, OLMo-core's usual
    multiple)."""
    budget_fraction: float = 0.5
    """The importance-allocated variant has the neurons of this uniform fraction, spread over
    layers by importance (multiples of ``width_multiple``, at least one multiple per layer)."""
    importance_seqs: int = 256
    """Calibration sequences (of ``seq_len``) for importance, math and general each."""
    top_k: int = 32
    """Teacher log-probs kept per token in the distillation store."""
    distill: RunSettings = field(default_factory=lambda: RunSettings(250, 3e-3))
    """Each pruned expert's distillation run."""
    code: RunSettings = field(default_factory=lambda: RunSettings(150, 5e-3))
    """The second domain expert (code), for composition."""
    composed_fraction: float = 0.5
    """The distilled math expert of this width fraction (one of ``width_fractions``) is also
    merged with the code expert."""
    merge_top_k: int = 2
    """Experts per token in the merged public + math + code model."""
    router: RunSettings = field(default_factory=lambda: RunSettings(100, 3e-2, warmup_steps=10))
    """Router-only training of the merged model on a mix of general, math and code data
    (FlexOlmo's router tuning; every other weight frozen)."""
    router_seqs: int = 64
    """Sequences of the domain's and of general data that each domain router is fitted on."""
    eval_problems: Optional[int] = None
    """Held-out problems evaluated (None: all)."""
    eval_windows: int = 64
    """Held-out general (and code) windows of ``seq_len`` evaluated."""
    seed: int = 0
    margin: float = 0.1
    """The half-width distilled expert's math answer loss may exceed the full expert's by at most
    this fraction (see :func:`olmo_flex_ext.demo.results.check_claims`)."""
    claim_accuracy: bool = True
    """Whether "the full expert beats no expert" also requires higher accuracy (the quick demo's
    models are too small for accuracy to be more than noise)."""
    wandb: bool = True
    """Log training runs to W&B (not part of a run's identity: results do not depend on it)."""

    def widths(self) -> List[int]:
        """The uniform pruned widths, widest first."""
        m = self.width_multiple
        return [max(m, round(self.public_width * f / m) * m) for f in self.width_fractions]

    def composed_width(self) -> int:
        """The width of the distilled math expert that is also merged."""
        return self.widths()[self.width_fractions.index(self.composed_fraction)]

    def composition_tags(self) -> List[str]:
        """The composition groups: the full math expert (``""``) and the distilled one."""
        return ["", str(self.composed_width())]

    def budget_width(self) -> int:
        m = self.width_multiple
        return max(m, round(self.public_width * self.budget_fraction / m) * m)


def demo_config(quick: bool = False, *, wandb: bool = True, seed: int = 0) -> DemoConfig:
    """The full demo (about 10 minutes on 2 CPU cores) or the shortened CI variant (``quick``);
    ``seed`` seeds the generated data and every training run."""
    config = _full(wandb) if not quick else _quick(wandb)
    config.seed = config.data.seed = seed
    return config


def _full(wandb: bool) -> DemoConfig:
    return DemoConfig(quick=False, wandb=wandb)


def _quick(wandb: bool) -> DemoConfig:
    return DemoConfig(
        quick=True,
        data=DemoDataConfig(
            general_train_docs=1500, general_math_problems=2500, general_code_docs=150,
            general_eval_docs=60, math_train_problems=8000, math_eval_problems=120,
            math_distill_problems=3000, code_train_docs=1200, code_eval_docs=40,
        ),
        d_model=64, n_layers=2, n_heads=4, public_width=192,
        public=RunSettings(400, 3e-3, save_interval=100),
        expert=RunSettings(300, 5e-3, save_interval=50),
        importance_seqs=64, top_k=16,
        distill=RunSettings(100, 3e-3, save_interval=50),
        code=RunSettings(100, 5e-3, save_interval=50),
        router=RunSettings(40, 3e-2, warmup_steps=5, save_interval=20),
        router_seqs=16, eval_windows=16, claim_accuracy=False, wandb=wandb,
    )  # fmt: skip


def identity(config: DemoConfig) -> Dict[str, Any]:
    """The settings that determine a demo's results (what ``demo.json`` records)."""
    d = asdict(config)
    d.pop("wandb")
    return json.loads(json.dumps(d))
