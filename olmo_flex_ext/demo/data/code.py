"""Small Python programs for the demo's second domain (a code expert next to the math expert).

Each document is one to three functions or classes built from templates (loops, conditions,
comprehensions, dictionaries, classes with methods) whose names, attributes and constants come from
the English grammar's vocabulary. The demo's general corpus holds no code, so what the code expert
learns (indentation, keywords, the shape of a loop) is what only its data teaches, like FlexOlmo's
code expert. Deterministic for a given seed; held-out documents come from another seed.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, List

from .english import FOODS, PLACES, THINGS, plural

__all__ = ["code_documents", "TEMPLATES"]

_ATTRS = "size weight price count age height speed length width level score".split()
_METHODS = "open clean move paint fix wash fill close check update reset grow".split()
_ADJS = "big small heavy light cheap old new fast slow tall short".split()
_INDENT = "    "


class _Names:
    """The names one function uses: a thing, its plural, two attributes, a method, a constant."""

    def __init__(self, rng: random.Random):
        self.x = rng.choice(THINGS + FOODS)
        self.xs = plural(self.x)
        self.attr, self.attr2 = rng.sample(_ATTRS, 2)
        self.method = rng.choice(_METHODS)
        self.adj = rng.choice(_ADJS)
        self.place = rng.choice(PLACES)
        self.n = rng.randint(0, 99)
        self.cls = self.x.capitalize()


def _lines(*lines: str) -> str:
    return "\n".join(lines)


def _total(v: _Names) -> str:
    return _lines(
        f"def total_{v.attr}({v.xs}):",
        f"{_INDENT}total = 0",
        f"{_INDENT}for {v.x} in {v.xs}:",
        f"{_INDENT * 2}total += {v.x}.{v.attr}",
        f"{_INDENT}return total",
    )


def _count(v: _Names) -> str:
    return _lines(
        f"def count_{v.adj}_{v.xs}({v.xs}):",
        f"{_INDENT}count = 0",
        f"{_INDENT}for {v.x} in {v.xs}:",
        f"{_INDENT * 2}if {v.x}.{v.attr} > {v.n}:",
        f"{_INDENT * 3}count += 1",
        f"{_INDENT}return count",
    )


def _filter(v: _Names) -> str:
    return _lines(
        f"def {v.adj}_{v.xs}({v.xs}, limit={v.n}):",
        f"{_INDENT}return [{v.x} for {v.x} in {v.xs} if {v.x}.{v.attr} < limit]",
    )


def _index(v: _Names) -> str:
    return _lines(
        f"def {v.xs}_by_{v.attr}({v.xs}):",
        f"{_INDENT}result = {{}}",
        f"{_INDENT}for {v.x} in {v.xs}:",
        f"{_INDENT * 2}result[{v.x}.{v.attr}] = {v.x}",
        f"{_INDENT}return result",
    )


def _best(v: _Names) -> str:
    return _lines(
        f"def find_{v.adj}_{v.x}({v.xs}):",
        f"{_INDENT}best = None",
        f"{_INDENT}for {v.x} in {v.xs}:",
        f"{_INDENT * 2}if best is None or {v.x}.{v.attr} > best.{v.attr}:",
        f"{_INDENT * 3}best = {v.x}",
        f"{_INDENT}return best",
    )


def _repeat(v: _Names) -> str:
    return _lines(
        f"def {v.method}_{v.x}({v.x}, times={v.n % 9 + 1}):",
        f"{_INDENT}while times > 0:",
        f"{_INDENT * 2}{v.x}.{v.method}()",
        f"{_INDENT * 2}times -= 1",
        f"{_INDENT}return {v.x}",
    )


def _describe(v: _Names) -> str:
    return _lines(
        f"def describe_{v.x}({v.x}):",
        f'{_INDENT}return "the {v.x} in the {v.place} has " + str({v.x}.{v.attr}) + " {v.attr}"',
    )


def _klass(v: _Names) -> str:
    return _lines(
        f"class {v.cls}:",
        f"{_INDENT}def __init__(self, {v.attr}, {v.attr2}={v.n}):",
        f"{_INDENT * 2}self.{v.attr} = {v.attr}",
        f"{_INDENT * 2}self.{v.attr2} = {v.attr2}",
        "",
        f"{_INDENT}def {v.method}(self):",
        f"{_INDENT * 2}self.{v.attr} = self.{v.attr} + self.{v.attr2}",
        f"{_INDENT * 2}return self.{v.attr}",
    )


def _guard(v: _Names) -> str:
    return _lines(
        f"def check_{v.x}({v.x}):",
        f"{_INDENT}if {v.x} is None:",
        f'{_INDENT * 2}raise ValueError("no {v.x}")',
        f"{_INDENT}if {v.x}.{v.attr} < {v.n}:",
        f"{_INDENT * 2}return False",
        f"{_INDENT}return True",
    )


TEMPLATES: List[Callable[[_Names], str]] = [
    _total, _count, _filter, _index, _best, _repeat, _describe, _klass, _guard,
]  # fmt: skip
"""Each makes one function or class from a set of names."""


def code_documents(num_docs: int, *, seed: int = 0) -> Iterator[str]:
    """``num_docs`` programs of one to three functions or classes, deterministic for ``seed``."""
    rng = random.Random(f"code-{seed}")
    for _ in range(num_docs):
        parts = [rng.choice(TEMPLATES)(_Names(rng)) for _ in range(rng.randint(1, 3))]
        yield "\n\n\n".join(parts)
