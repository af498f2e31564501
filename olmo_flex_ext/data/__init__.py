"""Token data: reading OLMo-core token files, making the demo's small corpora, tokenizing JSONL.

Names are imported on first use so that ``olmo-flex --help`` does not load numpy or OLMo-core.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "DTYPES": "tokens",
    "TokenFiles": "tokens",
    "Window": "tokens",
    "expand_paths": "tokens",
    "token_dtype": "tokens",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
