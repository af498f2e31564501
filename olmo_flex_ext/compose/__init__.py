"""Composing experts: merge experts of different widths, domain-informed routers, opt-out,
router-only training. Functions the demo and users call:

- :func:`merge_experts` (``olmo-flex merge``), :func:`write_opt_out` (``olmo-flex opt-out``),
  :func:`set_opt_out` (in place on a built model);
- :func:`compute_domain_embeddings` (``olmo-flex domain-embed``), :func:`save_domain_embeddings`
  (vectors from any embedder), :func:`load_domain_embeddings`;
- :func:`fit_domain_router` (``olmo-flex domain-router``), :func:`save_domain_router`: router rows
  and expert bias that give a domain expert its domain's log-odds against public data;
- :func:`routing_statistics` (on a built model), :func:`checkpoint_routing`: where the routers send
  each domain's tokens (:class:`RoutingStatistics`);

Router-only training (FlexOlmo's "RT") is :func:`olmo_flex_ext.recipes.with_router_training`; model
config transforms (top-k, opt-out: ``with_opt_out``, ``without_experts``) live in
:mod:`olmo_flex_ext.models`.
"""

from ..lazy import lazy_exports

# Name -> submodule; imported on first use so that `olmo-flex --help` (which imports
# olmo_flex_ext.compose.commands) does not pay for torch and OLMo-core.
_EXPORTS = {
    "DomainEmbeddings": "embeddings",
    "compute_domain_embeddings": "embeddings",
    "load_domain_embeddings": "embeddings",
    "mean_router_inputs": "embeddings",
    "save_domain_embeddings": "embeddings",
    "DomainRouter": "domain_router",
    "fit_domain_router": "domain_router",
    "fit_log_odds": "domain_router",
    "save_domain_router": "domain_router",
    "for_router_inputs": "embeddings",
    "read_windows": "embeddings",
    "read_domain_windows": "embeddings",
    "run_batches": "embeddings",
    "MergeError": "merge",
    "merge_experts": "merge",
    "set_opt_out": "optout",
    "RoutingStatistics": "routing",
    "checkpoint_routing": "routing",
    "routing_statistics": "routing",
    "write_opt_out": "optout",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
