"""JSONL -> OLMo-core token files, checked against the tokenizer's own encode."""

import gzip
import json

import numpy as np
import pytest
import zstandard
from tokenizers import Tokenizer

from olmo_flex_ext.cli import main
from olmo_flex_ext.data import tokenize as tokenize_mod
from olmo_flex_ext.data.tokenize import tokenize_jsonl
from olmo_flex_ext.demo.data.english import english_documents
from olmo_flex_ext.demo.data.tokenizer import train_bpe_tokenizer
from olmo_flex_ext.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer and three JSONL files (plain, gzip, zstd) with their documents."""
    root = tmp_path_factory.mktemp("jsonl")
    docs = list(english_documents(90, seed=7)) + ["", "ünïcödé 42 ✓"]
    tok_dir = train_bpe_tokenizer(docs, root / "tok", vocab_size=400)
    lines = [json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)]
    (root / "a.jsonl").write_text("".join(lines[:30]) + "\n")  # a blank line is skipped
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write("".join(lines[30:60]))
    (root / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(lines[60:]).encode())
    )
    return root, tok_dir, docs


def _expected(tok_dir, docs):
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    return [i for d in docs for i in tok.encode(d).ids + [0]]


def _read(out):
    return np.concatenate(
        [np.fromfile(p, dtype=np.uint16) for p in sorted(out.glob("part-*.npy"))]
    ).tolist()


@pytest.mark.parametrize("workers", [1, 2])
def test_tokenize_matches_tokenizer(corpus, tmp_path, workers):
    root, tok_dir, docs = corpus
    meta = tokenize_jsonl(
        str(root / "*.json*"), tok_dir, tmp_path / "out", field="body", workers=workers,
        docs_per_chunk=7, progress=False,
    )  # fmt: skip
    assert _read(tmp_path / "out") == _expected(tok_dir, docs)
    assert meta["num_documents"] == len(docs) and meta["dtype"] == "uint16"
    assert [f["documents"] for f in meta["files"]] == [30, 30, len(docs) - 60]
    assert (
        json.loads((tmp_path / "out" / "meta.json").read_text())["num_tokens"] == meta["num_tokens"]
    )
    assert not list((tmp_path / "out").glob(".*"))


def test_tokenize_cli_and_uint32(corpus, tmp_path, capsys):
    root, tok_dir, docs = corpus
    out = tmp_path / "out"
    assert main([
        "tokenize", str(root / "b.jsonl.gz"), "--tokenizer", str(tok_dir), "--out", str(out),
        "--field", "body", "--dtype", "uint32", "--workers", "2",
    ]) == 0  # fmt: skip
    assert "30 documents" in capsys.readouterr().out
    got = np.fromfile(next(out.glob("part-*.npy")), dtype=np.uint32).tolist()
    assert got == _expected(tok_dir, docs[30:60])
    with pytest.raises(SystemExit) as e:  # done already: refused without --overwrite
        main(["tokenize", str(root / "b.jsonl.gz"), "--tokenizer", str(tok_dir), "--out", str(out)])
    assert e.value.code == 2


class Interrupted(BaseException):
    """Stands for Ctrl-C or a killed job (pytest reserves KeyboardInterrupt for itself)."""


def test_interrupted_run_resumes(corpus, tmp_path, monkeypatch):
    root, tok_dir, docs = corpus
    real = tokenize_mod._tokenize_file
    calls = ["stop"]

    def stop_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3 and calls[0] == "stop":
            raise Interrupted
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tokenize_mod, "_tokenize_file", stop_on_second)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        tokenize_jsonl(str(root / "*.json*"), tok_dir, out, field="body", progress=False)
    assert not (out / "meta.json").exists() and len(list(out.glob("part-*.npy"))) == 1
    calls.clear()
    tokenize_jsonl(str(root / "*.json*"), tok_dir, out, field="body", progress=False)
    assert [c.split("/")[-1] for c in calls] == ["b.jsonl.gz", "c.jsonl.zst"]  # a.jsonl was done
    assert _read(out) == _expected(tok_dir, docs)


@pytest.mark.parametrize(
    "content, field, match",
    [
        ('{"text": "ok"}\n{"text": \n', "text", r"a\.jsonl:2 is not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', "text", r"a\.jsonl:2 has no string field 'text'"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_output(corpus, tmp_path, content, field, match):
    _, tok_dir, _ = corpus
    (tmp_path / "a.jsonl").write_text(content)
    with pytest.raises(UserError, match=match):
        tokenize_jsonl(
            str(tmp_path / "a.jsonl"),
            tok_dir,
            tmp_path / "out",
            field=field,
            workers=2,
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_missing_inputs_and_tokenizer(corpus, tmp_path):
    root, tok_dir, _ = corpus
    with pytest.raises(UserError, match="no JSONL files match"):
        tokenize_jsonl(str(tmp_path / "*.jsonl"), tok_dir, tmp_path / "out")
    with pytest.raises(UserError, match="no tokenizer.json"):
        tokenize_jsonl(str(root / "a.jsonl"), tmp_path, tmp_path / "out")
