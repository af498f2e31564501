"""Math evaluation on held-out arithmetic problems: exact-match accuracy of greedy answers and
the loss on answer tokens; :class:`MathEvalCallback` adds them to the in-loop evaluation.

Greedy decoding is a plain batched loop over the model's logits. OLMo-core's
``TransformerGenerationModule`` was checked and is not used: its constructor re-initialises the
weights of the model it is given (``parallelize_model`` -> ``init_weights``), so it cannot wrap a
model being trained; its KV cache is unsupported by the torch attention backend on CPU; and without
the cache it ignores left-padding. Prompts are therefore grouped by length (no padding at all) and
each step runs the full prefix, which is cheap for prompts of a few dozen tokens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence

import torch
from olmo_core.distributed.utils import get_world_size

from ..eval.callback import FlexEvalCallback
from ..eval.lm import LogitsFn, eval_mode, model_device, next_token_losses
from .data.arithmetic import Problem

__all__ = [
    "MathScores",
    "EncodedProblem",
    "encode_problems",
    "greedy_decode",
    "answer_loss",
    "evaluate_math",
    "is_correct",
    "MathEvalCallback",
]


@dataclass(frozen=True)
class EncodedProblem:
    prompt: List[int]
    work: List[int]
    """The worked step before the result (``" 23 + 15 ="``)."""
    result: List[int]
    """The result's tokens (``" 38"``): what the answer loss scores."""
    answer: str
    level: int

    @property
    def completion(self) -> List[int]:
        return self.work + self.result


@dataclass
class MathScores:
    accuracy: float
    """Fraction of problems whose greedy answer is exactly right (:func:`is_correct`)."""
    answer_loss: float
    """Mean cross-entropy (nats) per result token (``" <answer>"``) given the prompt and the
    worked step."""
    num_problems: int
    accuracy_by_level: Dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def encode_problems(problems: Sequence[Problem], tokenizer: Any) -> List[EncodedProblem]:
    """Prompt, work and result ids of each problem (``tokenizer``: a ``tokenizers.Tokenizer``).
    The tokenizer must not merge across those boundaries, which the demo's does not
    (``"Answer:"``, ``" 23 + 15 ="`` and ``" 38"`` end and start pre-tokens)."""

    def ids(text: str) -> List[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return [
        EncodedProblem(ids(p.prompt), ids(p.work), ids(p.result), str(p.answer), p.level)
        for p in problems
    ]


def greedy_decode(
    model: LogitsFn,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    batch_size: int = 64,
    stop_early: bool = True,
) -> List[List[int]]:
    """Greedy continuations of ``prompts`` (each cut before its first EOS). Prompts of equal
    length are batched together. ``stop_early=False`` always runs ``max_new_tokens`` steps, so
    every rank of a sharded model runs the same number of forward passes."""
    by_length: Dict[int, List[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    out: List[List[int]] = [[] for _ in prompts]
    with eval_mode(model):
        for length in sorted(by_length):
            idx = by_length[length]
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                seqs = _greedy_batch(
                    model, [prompts[i] for i in chunk], max_new_tokens, eos_id, stop_early
                )
                for i, seq in zip(chunk, seqs):
                    out[i] = seq
    return out


def _greedy_batch(
    model: LogitsFn, prompts: List[Sequence[int]], max_new: int, eos_id: int, stop_early: bool
) -> List[List[int]]:
    x = torch.tensor([list(p) for p in prompts], dtype=torch.long)
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    new: List[torch.Tensor] = []
    for _ in range(max_new):
        logits = model(x.to(model_device(model)))[:, -1].float().cpu()
        nxt = logits.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
        finished |= nxt == eos_id
        new.append(nxt)
        x = torch.cat([x, nxt[:, None]], dim=1)
        if stop_early and bool(finished.all()):
            break
    gen = torch.stack(new, dim=1).tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in gen]


def answer_loss(
    model: LogitsFn, encoded: Sequence[EncodedProblem], *, pad_id: int = 0, batch_size: int = 64
) -> float:
    """Mean next-token loss over the result tokens of each problem given its prompt and worked
    step (batches are right-padded with ``pad_id``; padding is never attended to by the causal
    model nor scored)."""
    total, count = 0.0, 0
    with eval_mode(model):
        for s in range(0, len(encoded), batch_size):
            chunk = encoded[s : s + batch_size]
            seqs = [e.prompt + e.completion for e in chunk]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
            for i, (e, seq) in enumerate(zip(chunk, seqs)):
                ids[i, : len(seq)] = torch.tensor(seq)
                # Loss entry t predicts token t + 1: the result's tokens.
                mask[i, len(seq) - len(e.result) - 1 : len(seq) - 1] = True
            losses = next_token_losses(model, ids).cpu()
            total += float(losses[mask].double().sum())
            count += int(mask.sum())
    return total / max(count, 1)


def is_correct(generated: str, answer: str) -> bool:
    """The exact-match rule: in the generated text up to the first newline, what follows the last
    ``=`` (or all of it if there is none), stripped, equals the answer."""
    return generated.split("\n")[0].rsplit("=", 1)[-1].strip() == answer


def evaluate_math(
    model: LogitsFn,
    problems: Sequence[Problem],
    tokenizer: Any,
    *,
    eos_id: int,
    batch_size: int = 64,
    stop_early: bool = True,
) -> MathScores:
    """Accuracy (greedy, exact match) and answer loss of ``model`` on ``problems``."""
    encoded = encode_problems(problems, tokenizer)
    max_new = max(len(e.completion) for e in encoded) + 2
    outputs = greedy_decode(
        model,
        [e.prompt for e in encoded],
        max_new_tokens=max_new,
        eos_id=eos_id,
        batch_size=batch_size,
        stop_early=stop_early,
    )
    correct: Dict[int, List[bool]] = defaultdict(list)
    for e, out in zip(encoded, outputs):
        correct[e.level].append(is_correct(tokenizer.decode(out), e.answer))
    flat = [c for cs in correct.values() for c in cs]
    return MathScores(
        accuracy=sum(flat) / len(flat),
        answer_loss=answer_loss(model, encoded, pad_id=eos_id, batch_size=batch_size),
        num_problems=len(flat),
        accuracy_by_level={lv: sum(cs) / len(cs) for lv, cs in sorted(correct.items())},
    )


@dataclass
class MathEvalCallback(FlexEvalCallback):
    """:class:`~olmo_flex_ext.eval.callback.FlexEvalCallback` plus held-out math problems: greedy
    exact-match accuracy (overall and per level) and answer loss, as ``eval/math/...``. Greedy
    decoding runs a fixed number of steps when there are several ranks, so sharded models see the
    same forward passes on every rank."""

    tokenizer: Optional[str] = None
    """HF tokenizer directory (``tokenizer.json``)."""
    math_problems: Optional[str] = None
    """JSONL of held-out problems as the demo data writes them (``math-eval.jsonl``)."""
    max_problems: Optional[int] = None

    @cached_property
    def _tok(self) -> Any:
        from ..data.tokenize import load_tokenizer

        assert self.tokenizer is not None, "MathEvalCallback.tokenizer is needed for math problems"
        return load_tokenizer(self.tokenizer)

    @cached_property
    def _problems(self) -> List[Any]:
        from .data.corpus import read_problems

        assert self.math_problems is not None
        problems = read_problems(self.math_problems)
        return problems[: self.max_problems] if self.max_problems else problems

    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        metrics: Dict[str, float] = {}
        if self.math_problems:
            tok, special = self._tok
            scores = evaluate_math(
                model,
                self._problems,
                tok,
                eos_id=special.eos,
                batch_size=self.batch_size,
                stop_early=get_world_size() == 1,
            )
            metrics["math/accuracy"] = scores.accuracy
            metrics["math/answer_loss"] = scores.answer_loss
            for level, acc in scores.accuracy_by_level.items():
                metrics[f"math/accuracy_level{level}"] = acc
        metrics.update(super().evaluate(model))
        return metrics
