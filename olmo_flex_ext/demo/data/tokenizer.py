"""Training a small byte-level BPE tokenizer offline with Hugging Face ``tokenizers``.

Digits are always split one per token (so the model sees numbers digit by digit, which makes
arithmetic learnable by a tiny model). The tokenizer directory holds ``tokenizer.json`` plus a
``tokenizer_config.json``, so both ``tokenizers`` and transformers' ``AutoTokenizer`` load it, and
``olmo-flex tokenize`` / ``export-hf --tokenizer`` accept it like any HF tokenizer directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Union

from olmo_core.data import TokenizerConfig

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "train_bpe_tokenizer", "tokenizer_config"]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_bpe_tokenizer(
    texts: Iterable[str], out: Union[str, Path], *, vocab_size: int = 1024
) -> Path:
    """Train a byte-level BPE with ``vocab_size`` entries (EOS = id 0, PAD = id 1) on ``texts``
    and write it to the directory ``out`` (created; files written atomically). Deterministic:
    the same texts give the same ``tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "tokenizer.json", tok.to_str(pretty=True))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
    }
    _write(out / "tokenizer_config.json", json.dumps(config, indent=2))
    return out


def tokenizer_config(directory: Union[str, Path]) -> TokenizerConfig:
    """OLMo-core's tokenizer config for a tokenizer trained by :func:`train_bpe_tokenizer`
    (vocabulary padded to a multiple of 128 by OLMo-core): the same as ``olmo-flex logprobs
    --tokenizer DIR`` takes, so stores made either way match."""
    from ...data.tokenizers import tokenizer_from_dir

    return tokenizer_from_dir(directory)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
