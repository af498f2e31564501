"""The demo's data set: generated general English, arithmetic and small Python programs, a BPE
tokenizer trained on them, and OLMo-core token files, built offline in seconds and identical on
every machine. General text trains the public model; arithmetic is the math expert's domain and
code the second expert's (composition).

Layout of the data directory (built in a temp dir and renamed into place, so it exists only when
complete; ``data.json`` records the settings and counts it was made from)::

    jsonl/{general,math,code}-{train,eval}.jsonl, math-distill.jsonl   documents ("text" field)
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

from ...data.tokenize import tokenize_jsonl
from .arithmetic import Problem, math_problems
from .code import code_documents
from .english import english_documents
from .tokenizer import tokenizer_config, train_bpe_tokenizer

__all__ = ["DemoDataConfig", "DemoData", "SPLITS", "read_problems"]

SPLITS = (
    "general-train", "general-eval", "math-train", "math-eval", "math-distill", "code-train",
    "code-eval",
)  # fmt: skip


@dataclass
class DemoDataConfig:
    """Sizes of the demo corpora (tokens: about 200 per general document, 25 per problem)."""

    general_train_docs: int = 6000
    general_math_problems: int = 10000
    """Problems mixed into the general corpus (about 20% of its tokens): public data contains
    some arithmetic, as web text does, but of other operations (``general_math_ops``) than the
    math domain's additions and subtractions."""
    general_math_ops: List[str] = field(default_factory=lambda: ["*"])
    general_code_docs: int = 600
    """Programs mixed into the general corpus (a few % of its tokens), as public web text holds
    some code; the code domain has many more."""
    general_eval_docs: int = 200
    math_train_problems: int = 30000
    math_eval_problems: int = 300
    math_distill_problems: int = 16000
    """The first problems of the math training set, tokenized on their own: the data the pruned
    experts are distilled on (the teacher's top-k store covers exactly these)."""
    math_levels: List[int] = field(default_factory=lambda: [1])
    """Difficulty levels (digits of the larger operand) of the problems. One digit: the 155
    addition and subtraction facts, which a tiny expert can learn in a few hundred steps."""
    math_split_by: str = "questions"
    """Held-out problems share no ``"questions"`` (question texts: a known fact asked in a new
    story or wording) or no ``"facts"`` (operation and operands) with the training problems.
    Unseen facts of one-digit arithmetic cannot be inferred by a tiny model, so the demo holds
    out questions: accuracy measures reading the operands and recalling the fact."""
    code_train_docs: int = 5000
    """Programs of the second domain (about 90 tokens each)."""
    code_eval_docs: int = 150
    vocab_size: int = 1024
    seed: int = 0

    def build(self, root: Union[str, Path], *, overwrite: bool = False) -> "DemoData":
        """Write the data directory ``root`` (see the module docstring) and open it."""
        from ...checkpoint import atomic_output_dir

        with atomic_output_dir(root, overwrite=overwrite) as tmp:
            problems = {
                "train": list(
                    math_problems(
                        self.math_train_problems,
                        split="train",
                        seed=self.seed,
                        levels=self.math_levels,
                        split_by=self.math_split_by,
                    )
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
                "math-distill": (p.text for p in problems["train"][: self.math_distill_problems]),
                "code-train": code_documents(self.code_train_docs, seed=self.seed),
                "code-eval": code_documents(self.code_eval_docs, seed=self.seed + 1),
            }
            (tmp / "jsonl").mkdir()
            for split, docs in texts.items():
                _write_jsonl(tmp / "jsonl" / f"{split}.jsonl", ({"text": t} for t in docs))
            _write_jsonl(
                tmp / "jsonl" / "math-eval.jsonl", (_problem_record(p) for p in problems["eval"])
            )
            train_bpe_tokenizer(
                _iter_jsonl_texts(
                    tmp / "jsonl" / f"{s}.jsonl"
                    for s in ("general-train", "math-train", "code-train")
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
        """Stories with problems and programs mixed in at deterministic random places."""
        import random

        docs = list(english_documents(self.general_train_docs, seed=self.seed))
        extra = math_problems(
            self.general_math_problems, split="train", seed=self.seed + 1000,
            levels=self.math_levels, split_by=self.math_split_by, ops=self.general_math_ops,
        )  # fmt: skip
        docs += [p.text for p in extra]
        docs += code_documents(self.general_code_docs, seed=self.seed + 1000)
        random.Random(f"general-mix-{self.seed}").shuffle(docs)
        return docs


class DemoData:
    """An existing demo data directory."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        if not (self.root / "data.json").is_file():
            from ...errors import UserError

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
