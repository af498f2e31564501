"""The demo corpora, tokenizer and data directory."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.demo.data.arithmetic import LEVELS, is_held_out, math_problems
from olmo_flex_ext.demo.data.code import code_documents
from olmo_flex_ext.demo.data.corpus import SPLITS, DemoData, DemoDataConfig
from olmo_flex_ext.demo.data.english import english_documents
from olmo_flex_ext.demo.data.tokenizer import EOS_TOKEN, PAD_TOKEN, train_bpe_tokenizer


def test_english_is_deterministic_and_varied():
    a = list(english_documents(200, seed=3))
    assert a == list(english_documents(200, seed=3))
    assert a != list(english_documents(200, seed=4))
    words = {w.strip('.,!?"') for d in a for w in d.split()}
    assert len(words) > 300
    assert len(set(a)) == len(a)


def test_math_problems_are_exact_and_splits_disjoint():
    train = list(math_problems(3000, split="train", seed=1, levels=[1, 2, 3]))
    held = list(math_problems(600, split="eval", seed=1, levels=[1, 2, 3]))
    products = list(math_problems(200, split="train", ops=["*"]))
    assert all(p.answer == p.a * p.b and p.op == "*" for p in products)
    for p in train + held:
        assert p.answer == (p.a + p.b if p.op == "+" else p.a - p.b) >= 0
        assert p.text == f"Question: {p.question}\nAnswer: {p.a} {p.op} {p.b} = {p.answer}"
        assert str(p.a) in p.question and str(p.b) in p.question
        assert max(len(str(p.a)), len(str(p.b))) == p.level
    train_keys = {(p.op, p.a, p.b) for p in train}
    held_keys = {(p.op, p.a, p.b) for p in held}
    assert not train_keys & held_keys
    assert all(is_held_out(":".join(map(str, k))) for k in held_keys)
    assert not any(is_held_out(":".join(map(str, k))) for k in train_keys)
    assert {p.level for p in held} == set(LEVELS) and {p.op for p in held} == {"+", "-"}
    assert len({p.template for p in train}) == 6
    again = math_problems(50, split="eval", seed=1, levels=[1, 2, 3])
    assert [p.text for p in again] == [p.text for p in held[:50]]


def test_code_documents_are_deterministic_python():
    import ast

    docs = list(code_documents(200, seed=3))
    assert docs == list(code_documents(200, seed=3)) != list(code_documents(200, seed=4))
    for d in docs:
        ast.parse(d)  # valid Python
    assert len(set(docs)) > 190


def test_question_split_shares_facts_but_no_question():
    kw = dict(seed=2, levels=[1], split_by="questions")
    train = list(math_problems(2000, split="train", **kw))
    held = list(math_problems(200, split="eval", **kw))
    assert not {p.question for p in train} & {p.question for p in held}
    assert {(p.op, p.a, p.b) for p in held} <= {(p.op, p.a, p.b) for p in train}


def test_tokenizer_is_deterministic_and_splits_digits(tmp_path):
    texts = list(english_documents(300)) + [p.text for p in math_problems(500, split="train")]
    a = train_bpe_tokenizer(texts, tmp_path / "a", vocab_size=512)
    b = train_bpe_tokenizer(texts, tmp_path / "b", vocab_size=512)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    tok = Tokenizer.from_file(str(a / "tokenizer.json"))
    assert tok.get_vocab_size() == 512
    assert tok.token_to_id(EOS_TOKEN) == 0 and tok.token_to_id(PAD_TOKEN) == 1
    assert [t for t in tok.encode("x 1234 y").tokens if t.isdigit()] == ["1", "2", "3", "4"]
    for p in math_problems(100, split="eval"):
        # Prompt, work and result tokenize separately exactly as in the training document.
        parts = [tok.encode(x).ids for x in (p.prompt, p.work, p.result)]
        assert parts[0] + parts[1] + parts[2] == tok.encode(p.text).ids
        assert tok.decode(tok.encode(p.text).ids) == p.text


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    config = DemoDataConfig(
        general_train_docs=60, general_math_problems=20, general_code_docs=5, general_eval_docs=10,
        math_train_problems=300, math_eval_problems=40, math_distill_problems=100,
        code_train_docs=30, code_eval_docs=5, vocab_size=512,
    )  # fmt: skip
    return config.build(tmp_path_factory.mktemp("d") / "data")


def test_demo_data_directory(demo_data: DemoData):
    tok = Tokenizer.from_file(str(demo_data.tokenizer_dir / "tokenizer.json"))
    assert demo_data.tokenizer().padded_vocab_size() == 512
    for split in SPLITS:
        files = TokenFiles(demo_data.token_glob(split), np.uint16)
        assert files.num_tokens == demo_data.num_tokens(split) > 0
        tokens = np.concatenate([files.array(i) for i in range(len(files.paths))]).tolist()
        with open(demo_data.root / "jsonl" / f"{split}.jsonl") as f:
            docs = [json.loads(line)["text"] for line in f]
        expected = [i for d in docs for i in tok.encode(d).ids + [0]]
        assert tokens == expected
    problems = demo_data.math_eval_problems()
    kw = dict(levels=[1], split_by="questions")
    assert len(problems) == 40 and problems == list(math_problems(40, split="eval", **kw))
    texts = {}
    for split in ("general-train", "math-train", "math-distill", "code-train"):
        with open(demo_data.root / "jsonl" / f"{split}.jsonl") as f:
            texts[split] = [json.loads(line)["text"] for line in f]
    general = texts["general-train"]
    assert len(general) == 85
    mixed_in = [t for t in general if t.startswith("Question: ")]
    assert len(mixed_in) == 20 and all(" * " in t for t in mixed_in)  # other operations
    assert len([t for t in general if t.startswith(("def ", "class "))]) == 5  # some code
    assert texts["math-distill"] == texts["math-train"][:100]  # distilled on training problems
    assert texts["code-train"] == list(code_documents(30, seed=0))
    assert not list(demo_data.root.parent.glob(".data.tmp-*"))


def test_demo_data_refuses_to_overwrite(demo_data: DemoData):
    from olmo_flex_ext.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="already exists"):
        DemoDataConfig().build(demo_data.root)
