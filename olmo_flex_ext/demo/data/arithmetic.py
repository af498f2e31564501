"""Arithmetic word problems with exact answers: the demo's math domain.

Every problem is one document ``"Question: <question>\\nAnswer: <a> <op> <b> = <result>"``: the
answer restates the arithmetic, then gives the result (a one-step worked solution, as GSM8K's
answers are worked). Questions come from several templates per operation (plain
``"What is 23 + 15?"``, worded ``"What is 23 plus 15?"``, and short stories) at difficulty levels
given by the number of digits of the larger operand. The math domain is addition and subtraction
(never negative); the demo's general corpus carries multiplication problems in the same format,
so the public model learns the format and how to find the operands, and the domain expert adds
what only the math data teaches.

Train and held-out problems never share a problem: by default an ``(operation, a, b)`` fact
belongs to exactly one split, chosen by a stable hash, so held-out accuracy measures arithmetic
the model has not seen, not memorised text (``split_by="questions"`` splits by question text).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence, Tuple

from .english import FOODS, PEOPLE, PLACES, THINGS, plural

__all__ = ["Problem", "math_problems", "is_held_out", "PROMPT_FORMAT", "LEVELS", "OPS", "ALL_OPS"]

PROMPT_FORMAT = "Question: {question}\nAnswer:"
"""A problem's prompt; the completion is ``" <a> <op> <b> = <answer>"``."""

LEVELS = (1, 2, 3)
"""Difficulty levels: the number of digits of the larger operand."""

OPS = ("+", "-")
"""The demo's math domain: additions and subtractions."""

ALL_OPS = ("+", "-", "*")

_ADD = [
    "What is {a} plus {b}?",
    "What is {a} + {b}?",
    "Add {a} and {b}.",
    "What is the sum of {a} and {b}?",
    "{name} has {a} {xs}. {He} gets {b} more. How many {things} does {he} have now?",
    "There are {a} {xs} in the {place} and {b} {ys} in the {place2}. How many {things} are "
    "there in all?",
]
_SUB = [
    "What is {a} minus {b}?",
    "What is {a} - {b}?",
    "Subtract {b} from {a}.",
    "What is the difference between {a} and {b}?",
    "{name} had {a} {xs} and gave {b} to {name2}. How many {things} does {name} have left?",
    "The {place} had {a} {xs}. Then {b} {ys} were taken away. How many {things} are left?",
]
_MUL = [
    "What is {a} times {b}?",
    "What is {a} * {b}?",
    "Multiply {a} and {b}.",
    "What is the product of {a} and {b}?",
    "{name} has {a} boxes with {b} {ys} in each. How many {things} does {he} have?",
    "There are {a} rows of {b} {ys} in the {place}. How many {things} are there in all?",
]
TEMPLATES = {"+": _ADD, "-": _SUB, "*": _MUL}
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Problem:
    """One problem: ``prompt + completion`` is the training document (before EOS)."""

    question: str
    answer: int
    op: str
    a: int
    b: int
    level: int
    template: int

    @property
    def prompt(self) -> str:
        return PROMPT_FORMAT.format(question=self.question)

    @property
    def work(self) -> str:
        """The worked step before the result: ``" 23 + 15 ="``."""
        return f" {self.a} {self.op} {self.b} ="

    @property
    def result(self) -> str:
        """The final answer as it follows the work: ``" 38"``."""
        return f" {self.answer}"

    @property
    def completion(self) -> str:
        return self.work + self.result

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def is_held_out(key: str, percent: int = 10) -> bool:
    """Whether ``key`` (a fact ``"op:a:b"`` or a question text) belongs to the held-out split;
    stable across machines and versions."""
    return zlib.crc32(key.encode()) % 100 < percent


def split_key(problem: "Problem", by: str) -> str:
    """What decides a problem's split: its fact (``by="facts"``) or its question text."""
    return f"{problem.op}:{problem.a}:{problem.b}" if by == "facts" else problem.question


def _operands(rng: random.Random, level: int, op: str) -> Tuple[int, int]:
    lo = 0 if level == 1 else 10 ** (level - 1)
    a = rng.randint(lo, 10**level - 1)
    b_digits = 1 if op == "*" else rng.randint(1, level)
    b = rng.randint(0 if b_digits == 1 else 10 ** (b_digits - 1), 10**b_digits - 1)
    if rng.random() < 0.5:
        a, b = b, a
    if op == "-" and a < b:
        a, b = b, a
    return a, b


def _question(rng: random.Random, op: str, a: int, b: int, template: int) -> str:
    (name, he, _, _), (name2, _, _, _) = rng.sample(PEOPLE, 2)
    thing = rng.choice(THINGS + FOODS)
    place, place2 = rng.sample(PLACES, 2)
    return TEMPLATES[op][template].format(
        a=a,
        b=b,
        name=name,
        name2=name2,
        He=he.capitalize(),
        he=he,
        place=place,
        place2=place2,
        things=plural(thing),
        xs=thing if a == 1 else plural(thing),
        ys=thing if b == 1 else plural(thing),
    )


def math_problems(
    num: int,
    *,
    split: str,
    seed: int = 0,
    levels: Sequence[int] = LEVELS,
    held_out_percent: int = 10,
    split_by: str = "facts",
    ops: Sequence[str] = OPS,
) -> Iterator[Problem]:
    """``num`` problems of ``split`` (``"train"`` or ``"eval"``), levels and operations drawn
    uniformly, deterministic for a given seed."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if split_by not in ("facts", "questions") or not 0 < held_out_percent < 100:
        raise ValueError(f"bad split: split_by={split_by!r}, held_out_percent={held_out_percent}")
    want_held_out = split == "eval"
    rng = random.Random(f"math-{split}-{seed}")
    made = 0
    while made < num:
        level, op = rng.choice(list(levels)), rng.choice(list(ops))
        a, b = _operands(rng, level, op)
        template = rng.randrange(len(TEMPLATES[op]))
        answer = _APPLY[op](a, b)
        problem = Problem(_question(rng, op, a, b, template), answer, op, a, b, level, template)
        if is_held_out(split_key(problem, split_by), held_out_percent) == want_held_out:
            yield problem
            made += 1
