"""Random tiny models for the interop tests: transformers FlexOlmo/Olmo2 (the oracles) and ours."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

VOCAB = 128
D_MODEL = 32


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random, norm gains around 1 (so that a swapped tensor changes the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.1 * noise)
    return model


def hf_flex(
    out: Optional[Path] = None,
    *,
    experts: int = 2,
    top_k: int = 2,
    width: int = 24,
    kv_heads: int = 4,
    layers: int = 2,
    vocab: int = VOCAB,
    d_model: int = D_MODEL,
    norm_topk_prob: bool = False,
    seed: int = 0,
    **save_kwargs,
):
    """A random transformers FlexOlmoForCausalLM (saved to ``out`` when given)."""
    from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

    config = FlexOlmoConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        num_experts=experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=norm_topk_prob,
        pad_token_id=1,
        eos_token_id=0,
    )
    model = randomize(FlexOlmoForCausalLM(config), seed).eval()
    if out is not None:
        model.save_pretrained(str(out), **save_kwargs)
    return model


def hf_olmo2(out: Path, *, width: int = 48, layers: int = 2, seed: int = 0):
    """A random transformers Olmo2ForCausalLM saved to ``out``."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    config = Olmo2Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        pad_token_id=1,
        eos_token_id=0,
    )
    model = randomize(Olmo2ForCausalLM(config), seed).eval()
    model.save_pretrained(str(out))
    return model


def tokens(seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits.float()


@torch.no_grad()
def our_logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).float()


def load_hf(path: Path, dtype=torch.float32):
    """A saved directory loaded by transformers, failing on any missing or unexpected weight."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}
    assert not problems, problems
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
