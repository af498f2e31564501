"""Math accuracy, answer loss, held-out loss and the in-loop callback, against independent
computations."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from olmo_flex_ext.demo.data.arithmetic import math_problems
from olmo_flex_ext.demo.data.english import english_documents
from olmo_flex_ext.demo.data.tokenizer import train_bpe_tokenizer
from olmo_flex_ext.demo.math_eval import (
    MathEvalCallback,
    answer_loss,
    encode_problems,
    evaluate_math,
)
from olmo_flex_ext.eval.lm import token_file_loss
from olmo_flex_ext.models import olmo2_dense

EOS = 0


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    texts = list(english_documents(100)) + [p.text for p in math_problems(400, split="train")]
    return train_bpe_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=384)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = olmo2_dense(d_model=32, n_layers=2, n_heads=2, vocab_size=384, hidden_size=64).build(
        init_device="cpu"
    )
    m.init_weights(device=torch.device("cpu"))
    return m.eval()


class Oracle(torch.nn.Module):
    """Emits, token by token, a fixed completion (then EOS) for each known prompt."""

    def __init__(self, completions, vocab):
        super().__init__()
        self.completions = {tuple(p): list(c) + [EOS] for p, c in completions}
        self.vocab = vocab
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        logits = torch.zeros(x.shape[0], x.shape[1], self.vocab)
        for b, row in enumerate(x.tolist()):
            prompt = next(k for k in self.completions if tuple(row[: len(k)]) == k)
            done = len(row) - len(prompt)
            target = self.completions[prompt][done] if done < len(self.completions[prompt]) else EOS
            logits[b, -1, target] = 5.0
        return logits


def test_accuracy_with_a_model_whose_answers_are_known(tok):
    unique = {p.question: p for p in math_problems(60, split="eval", seed=2)}
    problems = list(unique.values())[:40]  # distinct prompts, so the oracle is well defined
    encoded = encode_problems(problems, tok)
    wrong = set(range(0, 40, 3))  # these get answer + 1; others alternate with a bare answer
    completions = [
        (e.prompt, e.work + tok.encode(f" {p.answer + 1}").ids if i in wrong else
         e.completion if i % 2 else tok.encode(f" {p.answer}").ids)
        for i, (p, e) in enumerate(zip(problems, encoded))
    ]  # fmt: skip
    for stop_early in (True, False):
        scores = evaluate_math(
            Oracle(completions, 384), problems, tok, eos_id=EOS, batch_size=3, stop_early=stop_early
        )
        assert scores.accuracy == pytest.approx(1 - len(wrong) / 40)
        for level, acc in scores.accuracy_by_level.items():
            idx = [i for i, p in enumerate(problems) if p.level == level]
            assert acc == pytest.approx(sum(i not in wrong for i in idx) / len(idx))
    assert scores.num_problems == 40


def test_answer_loss_matches_per_problem_reference(model, tok):
    problems = list(math_problems(25, split="eval", seed=5))
    encoded = encode_problems(problems, tok)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:  # one unpadded sequence at a time
            ids = torch.tensor([e.prompt + e.work + e.result])
            logp = F.log_softmax(model(ids)[0].double(), dim=-1)
            for t in range(len(e.prompt) + len(e.work), ids.shape[1]):
                total -= float(logp[t - 1, ids[0, t]])
                count += 1
    assert answer_loss(model, encoded, batch_size=4) == pytest.approx(total / count, rel=1e-5)


def test_token_file_loss_matches_reference(model, tmp_path):
    rng = np.random.default_rng(0)
    for i, n in enumerate((5 * 16 + 7, 3 * 16)):
        rng.integers(0, 384, n).astype(np.uint16).tofile(tmp_path / f"part-{i}.npy")
    windows = []
    for i in range(2):
        arr = np.fromfile(tmp_path / f"part-{i}.npy", dtype=np.uint16).astype(np.int64)
        windows += [arr[s : s + 16] for s in range(0, len(arr) - 15, 16)]
    assert len(windows) == 8
    with torch.no_grad():
        losses = [
            F.cross_entropy(
                model(torch.tensor(w)[None])[0, :-1].double(), torch.tensor(w)[1:], reduction="sum"
            )
            for w in windows
        ]
    expected = float(sum(losses)) / (8 * 15)
    got = token_file_loss(
        model, str(tmp_path / "part-*.npy"), seq_len=16, vocab_size=384, batch_size=3
    )
    assert got == pytest.approx(expected, rel=1e-5)
    sub = token_file_loss(
        model, str(tmp_path / "part-*.npy"), seq_len=16, vocab_size=384, max_windows=2
    )
    picked = [0, 4]  # sample_windows spreads 2 of 8 evenly
    assert sub == pytest.approx(float(sum(losses[i] for i in picked)) / 30, rel=1e-5)


def test_math_eval_callback_records_metrics(model, tok_dir, tmp_path):
    from olmo_flex_ext.demo.data.corpus import _problem_record

    problems = list(math_problems(6, split="eval"))
    path = tmp_path / "math-eval.jsonl"
    import json

    path.write_text("".join(json.dumps(_problem_record(p)) + "\n" for p in problems))
    rng = np.random.default_rng(1)
    rng.integers(0, 384, 200).astype(np.uint16).tofile(tmp_path / "gen.npy")
    recorded = {}
    trainer = SimpleNamespace(
        train_module=SimpleNamespace(model=model),
        global_step=10,
        record_metric=lambda name, value: recorded.__setitem__(name, float(value)),
    )
    cb = MathEvalCallback(
        tokenizer=str(tok_dir), math_problems=str(path), general_data=str(tmp_path / "gen.npy"),
        seq_len=16, eval_interval=5,
    )  # fmt: skip
    cb.trainer = trainer
    model.train()
    cb.post_step()
    assert model.training  # restored
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    scores = evaluate_math(model, problems, tok, eos_id=EOS)
    assert recorded["eval/math/accuracy"] == pytest.approx(scores.accuracy)
    assert recorded["eval/math/answer_loss"] == pytest.approx(scores.answer_loss, rel=1e-6)
    general = token_file_loss(
        model, str(tmp_path / "gen.npy"), seq_len=16, vocab_size=384, max_windows=64
    )
    assert recorded["eval/general/loss"] == pytest.approx(general, rel=1e-6)
    assert {f"eval/math/accuracy_level{lv}" for lv in scores.accuracy_by_level} <= set(recorded)
    recorded.clear()
    trainer.global_step = 11
    cb.post_step()
    assert not recorded  # not an eval step
    model.eval()


def test_exact_match_rule():
    from olmo_flex_ext.demo.math_eval import is_correct

    assert is_correct(" 4 + 9 = 13", "13") and is_correct(" 13", "13")
    assert is_correct(" 4 + 9 = 13\nQuestion: ...", "13")
    assert not is_correct(" 4 + 9 = 12", "13") and not is_correct(" 13 apples", "13")
    assert not is_correct(" 4 + 9 = 1 = 13 3", "13") and not is_correct("", "13")
