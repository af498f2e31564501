"""Hugging Face interop: exact FlexOlmo import and export, and upcycling a dense model.

- :func:`import_hf`: transformers FlexOlmo directory -> model-only checkpoint (streaming).
- :func:`export_hf`: model-only or trainer checkpoint -> transformers FlexOlmo directory
  (narrower experts zero-padded; the widths are recorded so that import restores them).
- :func:`upcycle`: dense OLMo-2-style model -> N experts that are copies of its MLP.
- :func:`flex_olmo_hf_config`: the transformers ``FlexOlmoConfig`` for one of our model configs.

Needs the ``hf`` extra (transformers >= 5, safetensors). Names are imported on first use so that
``olmo-flex --help`` does not load torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "WIDTHS_KEY": "config",
    "flex_olmo_hf_config": "config",
    "model_config_from_hf": "config",
    "DEFAULT_MAX_SHARD_BYTES": "convert",
    "checkpoint_token_ids": "convert",
    "export_hf": "convert",
    "hf_lazy_state": "convert",
    "import_hf": "convert",
    "HFDir": "files",
    "parse_size": "files",
    "write_safetensors": "files",
    "write_sharded": "files",
    "experts_from_hf": "state",
    "moe_config_from_dense": "upcycling",
    "router_rows": "upcycling",
    "upcycle": "upcycling",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
