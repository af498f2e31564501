"""Composing experts: merge experts of different widths, domain-informed routers, opt-out,
router-only training. Functions the demo and users call:

- :func:`merge_experts` (``olmo-flex merge``), :func:`write_opt_out` (``olmo-flex opt-out``),
  :func:`opt_out` (in place on a built model), :func:`with_opt_out` (on a config);
- :func:`compute_domain_embeddings` (``olmo-flex domain-embed``), :func:`save_domain_embeddings`
  (vectors from any embedder), :func:`load_domain_embeddings`;
- :func:`router_only` / :func:`router_experiment` / :func:`router_only_experiment` (FlexOlmo's router-training "RT" variant).
"""

from ..lazy import lazy_exports

# Name -> submodule; imported on first use so that `olmo-flex --help` (which imports
# olmo_flex_ext.compose.commands) does not pay for torch and OLMo-core.
_EXPORTS = {
    "map_moe_configs": "configs",
    "moe_configs": "configs",
    "with_opt_out": "configs",
    "with_top_k": "configs",
    "DomainEmbeddings": "embeddings",
    "compute_domain_embeddings": "embeddings",
    "load_domain_embeddings": "embeddings",
    "mean_router_inputs": "embeddings",
    "save_domain_embeddings": "embeddings",
    "MergeError": "merge",
    "merge_experts": "merge",
    "opt_out": "optout",
    "without_experts": "optout",
    "write_opt_out": "optout",
    "ROUTER_PARAMS": "router_training",
    "ROUTER_ONLY_FREEZE": "router_training",
    "RouterOnlyCheck": "router_training",
    "router_experiment": "router_training",
    "router_only_experiment": "router_training",
    "router_only": "router_training",
    "router_only_patterns": "router_training",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
