"""The demo's data set: generated general English and arithmetic, a BPE tokenizer trained on them,
and OLMo-core token files, built offline in seconds and identical on every machine.

Layout of the data directory (built in a temp dir and renamed into place, so it exists only when
complete; ``data.json`` records the settings and counts it was made from)::

    jsonl/{general-train,general-eval,math-train,math-eval}.jsonl   documents ("text" field)
    tokenizer/                  tokenizer.json + tokenizer_config.json (EOS id 0, PAD id 1)
    tokens/<split>/part-*.npy   OLMo-core token files (uint16), one directory per JSONL file
    data.json

The JSONL files go through :func:`olmo_flex_ext.data.tokenize.tokenize_jsonl`, the same path real
runs use for their corpora. ``math-eval.jsonl`` also keeps each problem's prompt and answer for
exact-match evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from olmo_core.data import TokenizerConfig

from .arithmetic import Problem, math_problems
from .english import english_documents
from .tokenize import tokenize_jsonl
from .tokenizer import tokenizer_config, train_bpe_tokenizer

__all__ = ["DemoDataConfig", "DemoData", "SPLITS", "read_problems"]

SPLITS = ("general-train", "general-eval", "math-train", "math-eval")


@dataclass
class DemoDataConfig:
    """Sizes of the demo corpora (tokens: about 200 per general document, 25 per problem)."""

    general_train_docs: int = 6000
    general_math_problems: int = 10000
    """Problems mixed into the general corpus (about 20% of its tokens): public data contains
    some arithmetic, as web text does, but of other operations (``general_math_ops``) than the
    math domain's additions and subtractions."""
    general_math_ops: List[str] = field(default_factory=lambda: ["*"])
    general_eval_docs: int = 200
    math_train_problems: int = 30000
    math_eval_problems: int = 300
    math_levels: List[int] = field(default_factory=lambda: [1, 2])
    """Difficulty levels (digits of the larger operand) of the problems."""
    math_split_by: str = "facts"
    """Held-out problems share no ``"facts"`` (operation and operands) or no ``"questions"``
    (question texts) with the training problems."""
    vocab_size: int = 1024
    seed: int = 0

    def build(self, root: Union[str, Path], *, overwrite: bool = False) -> "DemoData":
        """Write the data directory ``root`` (see the module docstring) and open it."""
        from ..checkpoint import atomic_output_dir

        with atomic_output_dir(root, overwrite=overwrite) as tmp:
            problems = {
                "train": math_problems(
                    self.math_train_problems,
                    split="train",
                    seed=self.seed,
                    levels=self.math_levels,
                    split_by=self.math_split_by,
                ),
                "eval": math_problems(
                    self.math_eval_problems,
                    split="eval",
                    seed=self.seed,
                    levels=self.math_levels,
                    split_by=self.math_split_by,
                ),
            }
            texts = {
                "general-train": self._general_train(),
                "general-eval": english_documents(self.general_eval_docs, seed=self.seed + 1),
                "math-train": (p.text for p in problems["train"]),
            }
            (tmp / "jsonl").mkdir()
            for split, docs in texts.items():
                _write_jsonl(tmp / "jsonl" / f"{split}.jsonl", ({"text": t} for t in docs))
            _write_jsonl(
                tmp / "jsonl" / "math-eval.jsonl", (_problem_record(p) for p in problems["eval"])
            )
            train_bpe_tokenizer(
                _iter_jsonl_texts(
                    tmp / "jsonl" / f"{s}.jsonl" for s in ("general-train", "math-train")
                ),
                tmp / "tokenizer",
                vocab_size=self.vocab_size,
            )
            counts = {}
            for split in SPLITS:
                meta = tokenize_jsonl(
                    str(tmp / "jsonl" / f"{split}.jsonl"),
                    tmp / "tokenizer",
                    tmp / "tokens" / split,
                    progress=False,
                )
                counts[split] = {"documents": meta["num_documents"], "tokens": meta["num_tokens"]}
            manifest = {"config": asdict(self), "counts": counts}
            (tmp / "data.json").write_text(json.dumps(manifest, indent=2))
        return DemoData(root)

    def _general_train(self) -> List[str]:
        """Stories with training problems mixed in at deterministic random places."""
        import random

        docs = list(english_documents(self.general_train_docs, seed=self.seed))
        extra = math_problems(
            self.general_math_problems, split="train", seed=self.seed + 1000,
            levels=self.math_levels, split_by=self.math_split_by, ops=self.general_math_ops,
        )  # fmt: skip
        docs += [p.text for p in extra]
        random.Random(f"general-mix-{self.seed}").shuffle(docs)
        return docs


class DemoData:
    """An existing demo data directory."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        if not (self.root / "data.json").is_file():
            from ..errors import UserError

            raise UserError(f"{self.root} is not a demo data directory (no data.json)")
        self.manifest: Dict[str, Any] = json.loads((self.root / "data.json").read_text())

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def tokenizer(self) -> TokenizerConfig:
        return tokenizer_config(self.tokenizer_dir)

    def token_glob(self, split: str) -> str:
        """Glob of the token files of ``split`` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
        return str(self.root / "tokens" / split / "part-*.npy")

    def num_tokens(self, split: str) -> int:
        return int(self.manifest["counts"][split]["tokens"])

    @property
    def math_eval_path(self) -> Path:
        return self.root / "jsonl" / "math-eval.jsonl"

    def math_eval_problems(self) -> List[Problem]:
        """The held-out problems, for exact-match accuracy and answer loss."""
        return read_problems(self.math_eval_path)


def _problem_record(p: Problem) -> Dict[str, Any]:
    return dict(asdict(p), text=p.text, prompt=p.prompt, completion=p.completion)


def read_problems(path: Union[str, Path]) -> List[Problem]:
    """Problems from a JSONL written like ``math-eval.jsonl``."""
    keys = ("question", "answer", "op", "a", "b", "level", "template")
    with open(path) as f:
        return [Problem(**{k: r[k] for k in keys}) for r in map(json.loads, f)]


def _write_jsonl(path: Path, records: Iterable[Dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _iter_jsonl_texts(paths: Iterable[Path]) -> Iterable[str]:
    for path in paths:
        with open(path) as f:
            for line in f:
                yield json.loads(line)["text"]
