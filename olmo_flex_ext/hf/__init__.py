"""Hugging Face interop: exact FlexOlmo import and export, and upcycling a dense model.

- :func:`import_hf`: transformers FlexOlmo directory -> model-only checkpoint (streaming).
- :func:`export_hf`: model-only or trainer checkpoint -> transformers FlexOlmo directory
  (narrower experts zero-padded; the widths are recorded so that import restores them).
- :func:`upcycle`: dense OLMo-2-style model -> N experts that are copies of its MLP.
- :func:`flex_olmo_hf_config`: the transformers ``FlexOlmoConfig`` for one of our model configs.

Needs the ``hf`` extra (transformers >= 5, safetensors).
"""

from .config import WIDTHS_KEY, flex_olmo_hf_config, model_config_from_hf
from .convert import (
    DEFAULT_MAX_SHARD_BYTES,
    checkpoint_token_ids,
    export_hf,
    hf_lazy_state,
    import_hf,
)
from .files import HFDir, parse_size, write_safetensors, write_sharded
from .state import experts_from_hf, experts_to_hf
from .upcycle import moe_config_from_dense, router_rows, upcycle

__all__ = [
    "import_hf",
    "export_hf",
    "upcycle",
    "flex_olmo_hf_config",
    "model_config_from_hf",
    "moe_config_from_dense",
    "router_rows",
    "checkpoint_token_ids",
    "hf_lazy_state",
    "experts_from_hf",
    "experts_to_hf",
    "HFDir",
    "write_safetensors",
    "write_sharded",
    "parse_size",
    "WIDTHS_KEY",
    "DEFAULT_MAX_SHARD_BYTES",
]
