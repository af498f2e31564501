"""OLMo-core tokenizer configs by name (``dolma2``, ``gpt2``, ..., ``tiny`` for the synthetic data)
or from a Hugging Face tokenizer directory, as the commands that need a tokenizer identity
(``olmo-flex logprobs``) take them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

__all__ = [
    "TOKENIZER_NAMES",
    "named_tokenizer",
    "tokenizer_for_vocab",
    "tokenizer_from_dir",
    "tokenizer_from_arg",
]

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
            f"pass --tokenizer (one of {', '.join(TOKENIZER_NAMES)}, or a tokenizer directory)"
        )
    return named_tokenizer(matches[0])


def tokenizer_from_dir(directory: Union[str, Path]):
    """OLMo-core's tokenizer config for a Hugging Face tokenizer directory (``tokenizer.json``
    plus ``tokenizer_config.json``, as ``olmo-flex tokenize`` takes it): its vocabulary size,
    EOS, PAD (EOS when it names none) and BOS (when it names one) ids, identified by the
    directory's real path."""
    from olmo_core.data import TokenizerConfig

    from .tokenize import load_tokenizer, special_token_id

    d = Path(directory)
    tok, special = load_tokenizer(d)
    bos = special_token_id(tok, d, "bos_token")
    pad = special_token_id(tok, d, "pad_token")
    return TokenizerConfig(
        vocab_size=tok.get_vocab_size(),
        eos_token_id=special.eos,
        pad_token_id=special.eos if pad is None else pad,
        bos_token_id=bos,
        identifier=str(d.resolve()),
    )


def tokenizer_from_arg(text: str):
    """``--tokenizer``: a name from :data:`TOKENIZER_NAMES` or a tokenizer directory."""
    from ..errors import UserError

    if text in TOKENIZER_NAMES:
        return named_tokenizer(text)
    if Path(text).exists():
        return tokenizer_from_dir(text)
    raise UserError(
        f"--tokenizer {text}: not a known tokenizer ({', '.join(TOKENIZER_NAMES)}) and no such "
        "directory; give a name or a Hugging Face tokenizer directory (tokenizer.json)"
    )
