"""Token data: reading OLMo-core token files, making the demo's small corpora, tokenizing JSONL."""

from .tokens import DTYPES, TokenFiles, Window, expand_paths, token_dtype

__all__ = ["DTYPES", "TokenFiles", "Window", "expand_paths", "token_dtype"]
