"""Evaluating demo checkpoints: held-out math problems (greedy exact-match accuracy, loss on the
answer tokens), held-out general text and held-out code (loss per token)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from rich.console import Console

if TYPE_CHECKING:
    from .config import DemoConfig
    from .data.corpus import DemoData

__all__ = ["evaluate_checkpoint", "result_row"]

console = Console()


def evaluate_checkpoint(
    checkpoint: str,
    data: DemoData,
    config: DemoConfig,
    *,
    metrics: Sequence[str] = ("math", "general"),
    opt_out: Optional[Sequence[int]] = None,
) -> Dict[str, float]:
    """``math_accuracy`` and ``math_loss`` (``"math"``), ``general_loss``, ``code_loss`` of a
    checkpoint, optionally with experts switched off (:func:`olmo_flex_ext.compose.set_opt_out`)."""
    from .. import load_model
    from ..data.tokenize import load_tokenizer
    from ..eval.lm import token_file_loss
    from .math_eval import evaluate_math

    model = load_model(checkpoint)
    if opt_out:
        from ..compose import set_opt_out

        set_opt_out(model, list(opt_out))
    out: Dict[str, float] = {}
    if "math" in metrics:
        tok, special = load_tokenizer(data.tokenizer_dir)
        problems = data.math_eval_problems()[: config.eval_problems]
        scores = evaluate_math(model, problems, tok, eos_id=special.eos)
        out.update(math_accuracy=scores.accuracy, math_loss=scores.answer_loss)
    for domain in ("general", "code"):
        if domain in metrics:
            out[f"{domain}_loss"] = token_file_loss(
                model,
                data.token_glob(f"{domain}-eval"),
                seq_len=config.seq_len,
                vocab_size=model.vocab_size,
                max_windows=config.eval_windows,
            )
    return out


def result_row(
    name: str, kind: str, checkpoint: str, data: DemoData, config: DemoConfig
) -> Dict[str, Any]:
    """One ``results.json`` row: parameter counts and expert widths of a checkpoint plus its
    held-out math and general evaluation."""
    from ..checkpoint import read_model_config
    from .results import model_row_fields

    scores = evaluate_checkpoint(checkpoint, data, config)
    console.print(
        f"{name}: math accuracy {scores['math_accuracy']:.3f}, answer loss "
        f"{scores['math_loss']:.3f}, general loss {scores['general_loss']:.3f}"
    )
    return dict(name=name, kind=kind, **model_row_fields(read_model_config(checkpoint)), **scores)
