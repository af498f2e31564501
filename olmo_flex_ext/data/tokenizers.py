"""OLMo-core tokenizers by name (``dolma2``, ``gpt2``, ..., ``tiny`` for the synthetic data), as
the commands that need a tokenizer identity (``olmo-flex logprobs``) take them."""

from __future__ import annotations

from typing import List

__all__ = ["TOKENIZER_NAMES", "named_tokenizer", "tokenizer_for_vocab"]

TOKENIZER_NAMES: List[str] = ["dolma2", "dolma2_sigdig", "gpt_neox_olmo_dolma_v1_5", "gpt2", "tiny"]


def named_tokenizer(name: str):
    """An OLMo-core ``TokenizerConfig`` by name (``tiny`` = the synthetic tiny data's)."""
    from olmo_core.data import TokenizerConfig

    from ..errors import UserError

    if name == "tiny":
        from .synthetic import TINY_TOKENIZER

        return TINY_TOKENIZER
    if name not in TOKENIZER_NAMES:
        raise UserError(f"unknown tokenizer {name!r}; use one of {', '.join(TOKENIZER_NAMES)}")
    return getattr(TokenizerConfig, name)()


def tokenizer_for_vocab(vocab_size: int):
    """The one known tokenizer whose padded vocabulary is ``vocab_size``."""
    from ..errors import UserError

    matches = [n for n in TOKENIZER_NAMES if named_tokenizer(n).padded_vocab_size() == vocab_size]
    if len(matches) != 1:
        raise UserError(
            f"cannot tell the tokenizer of a {vocab_size}-token vocabulary "
            f"({'candidates: ' + ', '.join(matches) if matches else 'no known tokenizer'}); "
            f"pass --tokenizer (one of {', '.join(TOKENIZER_NAMES)})"
        )
    return named_tokenizer(matches[0])
