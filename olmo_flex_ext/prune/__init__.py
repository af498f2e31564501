"""Importance analysis, width allocation, weight slicing and the pruning callback.

- :mod:`.importance`: per-neuron expert importance on calibration data (forward hooks on the
  experts' probes; CPU or many ranks; resumable).
- :mod:`.scores`: the scores file (safetensors) and the model fingerprint that guards it.
- :mod:`.allocate`: uniform or importance-allocated widths; which neurons to keep.
- :mod:`.slicing`: cutting the expert weights, in memory or streaming a checkpoint.
- :mod:`.callback`: :class:`PruneCallback` for train configs.
- :mod:`.commands`: ``olmo-flex importance | compare-scores | allocate | prune``.

Names are imported lazily so that ``olmo-flex --help`` does not load torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "METHODS": "importance",
    "ImportanceAccumulator": "importance",
    "compute_importance": "importance",
    "checkpoint_importance": "importance",
    "ImportanceScores": "scores",
    "checkpoint_fingerprint": "scores",
    "module_fingerprint": "scores",
    "topk_overlap": "scores",
    "allocate_widths": "allocate",
    "allocate_for_budget": "allocate",
    "keep_indices": "allocate",
    "top_neurons": "scores",
    "uniform_widths": "allocate",
    "prune_checkpoint": "slicing",
    "prune_model": "slicing",
    "prune_state_dict": "slicing",
    "slice_expert_rows": "slicing",
    "PruneCallback": "callback",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
