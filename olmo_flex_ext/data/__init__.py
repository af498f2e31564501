"""Token data: reading OLMo-core token files (:mod:`.tokens`), tokenizing JSONL corpora with any
Hugging Face tokenizer (:mod:`.tokenize`), named OLMo-core tokenizers (:mod:`.tokenizers`), and the
synthetic token files of the tiny configs and tests (:mod:`.synthetic`).

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
