"""Every command refuses bad arguments and damaged inputs with exit status 2 and one ``error:``
line that names the problem (the file, and the row or position where there is one), and writes
nothing: the inputs and the case's folder are byte for byte the same afterwards.

Each case damages its own copy of a valid input (tests/guarantees_helpers.py) in the case's
folder; commands run in this process (``olmo_flex_ext.cli.main``), so a traceback would fail the
test as an exception.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from guarantees_helpers import (
    SEQ,
    Case,
    check_case,
    copy,
    flip_bytes,
)

TINY = str(Path(__file__).resolve().parents[1] / "train_configs" / "tiny_flex.py")


def out(t: Path, name: str = "out") -> Path:
    return t / name


def tokens(i, t, *extra):
    return ["--data", i.glob, "--seq-len", SEQ, *extra]


# ---- helpers that make damaged copies -------------------------------------------------------------


def damaged_ck(i, t, damage) -> Path:
    ck = copy(i.ck, t / "ck")
    damage(ck)
    return ck


def damaged_file(src: Path, dst: Path, damage) -> Path:
    copy(src, dst)
    damage(dst)
    return dst


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def scores_with(i, t, fill: float) -> Path:
    from olmo_flex_ext.prune.scores import ImportanceScores

    scores = ImportanceScores.load(i.scores)
    scores.scores[1][1][3] = fill
    return scores.save(t / "bad.safetensors")


def scores_of(ckpt: Path, i, t) -> Path:
    from olmo_flex_ext.prune.importance import checkpoint_importance

    scores = checkpoint_importance(ckpt, i.data, seq_len=SEQ, num_seqs=4, progress=False)
    return scores.save(t / f"{ckpt.name}.safetensors")


def token_copy(i, t, position: int, value: int) -> str:
    d = t / "data"
    d.mkdir()
    for f in i.data:
        shutil.copy(f, d)
    arr = np.memmap(d / Path(i.data[1]).name, dtype=np.uint16, mode="r+")
    arr[position] = value
    arr.flush()
    return str(d / "*.npy")


def raw_row(codec, ids, lps) -> np.ndarray:
    """One store row encoding ``ids`` as given (even unsorted or out of range): Elias-Fano as
    docs/store-format.md describes it, written independently of TopKCodec.encode."""
    lo = codec.lower_bits
    row = np.zeros(codec.row_bytes, dtype=np.uint8)
    low_bits = [(int(x) >> b) & 1 for x in ids for b in range(lo)]
    row[: codec.lower_bytes] = np.packbits(np.array(low_bits, np.uint8), bitorder="little")
    upper = np.zeros(codec.upper_bits, dtype=np.uint8)
    for j, x in enumerate(ids):
        upper[(int(x) >> lo) + j] = 1
    row[codec.lower_bytes : codec.id_bytes] = np.packbits(upper, bitorder="little")
    row[codec.id_bytes :] = (
        np.frombuffer(np.asarray(lps, np.float32).tobytes(), np.uint16)[1::2].copy().view(np.uint8)
    )
    return row


def damaged_store(i, t, row_fn=None, keep_hashes=False, meta_fn=None) -> Path:
    """A copy of the store; ``row_fn(codec)`` replaces row 5 of chunk 1; without
    ``keep_hashes`` meta.json has no chunk hashes (as a store written before they were recorded),
    so that the row check itself is what finds the damage."""
    from olmo_flex_ext.distill import TopKStore

    store = copy(i.store, t / "store")
    s = TopKStore(store)
    meta = json.loads((store / "meta.json").read_text())
    if row_fn is not None:
        chunk = store / meta["chunks"][1]["file"]
        rows = np.memmap(chunk, dtype=np.uint8, mode="r+").reshape(-1, s.codec.row_bytes)
        rows[5] = row_fn(s.codec)
        rows.flush()
    if not keep_hashes:
        for c in meta["chunks"]:
            c.pop("sha256", None)
    if meta_fn is not None:
        meta_fn(meta)
    (store / "meta.json").write_text(json.dumps(meta))
    return store


def hf_copy(i, t, damage) -> Path:
    hf = copy(i.hf, t / "hf")
    damage(hf)
    return hf


def config_file(t, text: str) -> Path:
    p = t / "config.py"
    p.write_text(text)
    return p


# ---- the table -----------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    Case("importance-seq-len-zero", lambda i, t: [
        "importance", i.ck, "--data", i.glob, "--seq-len", 0, "--num-seqs", 2, "--out", out(t)],
        ["--seq-len must be positive"]),
    Case("importance-more-sequences-than-data", lambda i, t: [
        "importance", i.ck, *tokens(i, t), "--num-seqs", 10000, "--out", out(t)],
        ["asked for 10000 sequences"]),
    Case("importance-unknown-method", lambda i, t: [
        "importance", i.ck, *tokens(i, t), "--num-seqs", 2, "--method", "magic", "--out", out(t)],
        ["unknown method 'magic'"]),
    Case("importance-no-token-files", lambda i, t: [
        "importance", i.ck, "--data", t / "none/*.npy", "--seq-len", SEQ, "--num-seqs", 2,
        "--out", out(t)], ["no token files match"]),
    Case("prune-no-width-choice", lambda i, t: [
        "prune", i.ck, "--scores", i.scores, "--out", out(t)], ["give exactly one of --widths"]),
    Case("prune-wider-than-expert", lambda i, t: [
        "prune", i.ck, "--scores", i.scores, "--widths", "64,48", "--out", out(t)], ["48"]),
    Case("prune-widths-file-not-json", lambda i, t: [
        "prune", i.ck, "--scores", i.scores, "--widths-file", write_json(t / "w.json", "{"),
        "--out", out(t)], ["cannot read widths from", "w.json"]),
    Case("prune-widths-file-not-integers", lambda i, t: [
        "prune", i.ck, "--scores", i.scores,
        "--widths-file", write_json(t / "w.json", {"expert_widths": [[64, "a"], [64, 8]]}),
        "--out", out(t)], ["w.json", "non-negative integers"]),
    Case("prune-widths-file-wrong-layers", lambda i, t: [
        "prune", i.ck, "--scores", i.scores,
        "--widths-file", write_json(t / "w.json", {"expert_widths": [[64, 16]]}),
        "--out", out(t)], ["layer"]),
    Case("prune-widths-file-missing", lambda i, t: [
        "prune", i.ck, "--scores", i.scores, "--widths-file", t / "nope.json", "--out", out(t)],
        ["cannot read widths from", "nope.json"]),
    Case("allocate-unreadable-budget", lambda i, t: [
        "allocate", i.scores, "--budget", "lots"], ["cannot read 'lots' as a count"]),
    Case("compare-scores-width-zero", lambda i, t: [
        "compare-scores", i.scores, i.scores, "--width", 0], ["--width must be positive"]),
    Case("compare-scores-other-shapes", lambda i, t: [
        "compare-scores", i.scores, scores_of(i.other, i, t), "--width", 8],
        ["different expert widths"]),
    Case("logprobs-top-k-zero", lambda i, t: [
        "logprobs", i.ck, *tokens(i, t), "--top-k", 0, "--out", out(t)],
        ["--top-k must be positive"]),
    Case("logprobs-top-k-above-vocabulary", lambda i, t: [
        "logprobs", i.ck, *tokens(i, t), "--top-k", 1000, "--out", out(t)],
        ["between 1 and the vocabulary size 512"]),
    Case("logprobs-unknown-tokenizer", lambda i, t: [
        "logprobs", i.ck, *tokens(i, t), "--tokenizer", "klingon", "--out", out(t)],
        ["--tokenizer klingon", "not a known tokenizer"]),
    Case("logprobs-tokenizer-directory-of-another-vocabulary", lambda i, t: [
        "logprobs", i.ck, *tokens(i, t), "--tokenizer", i.tokenizer, "--out", out(t)],
        ["tokenizer", "but the teacher's vocabulary is 512"]),
    Case("merge-same-checkpoint-twice", lambda i, t: [
        "merge", i.ck, i.ck, "--top-k", 2, "--out", out(t)], ["given twice"]),
    Case("merge-router-rows-of-wrong-count", lambda i, t: [
        "merge", i.ck, i.other, "--top-k", 2, "--router-from", i.emb, "--out", out(t)],
        ["--router-from has 1 embeddings"]),
    Case("opt-out-drop-nothing", lambda i, t: [
        "opt-out", i.ck, "--experts", "none", "--drop", "--out", out(t)],
        ["--drop needs at least one expert"]),
    Case("opt-out-unknown-expert", lambda i, t: [
        "opt-out", i.ck, "--experts", 7, "--out", out(t)], ["7"]),
    Case("domain-embed-name-twice", lambda i, t: [
        "domain-embed", i.ck, "--data", f"a={i.glob}", "--data", f"a={i.glob}", "--seq-len", SEQ,
        "--num-seqs", 2, "--out", out(t, "e.safetensors")], ["'a' is given twice"]),
    Case("domain-router-negative-l2", lambda i, t: [
        "domain-router", i.ck, "--data", i.glob, "--public-data", i.glob, "--seq-len", SEQ,
        "--num-seqs", 2, "--l2", -1, "--out", out(t, "r.safetensors")], ["--l2 at least 0"]),
    Case("import-olmo-core-of-our-own-checkpoint", lambda i, t: [
        "import-olmo-core", i.ck, out(t)], ["is not a stock OLMo-core MoE checkpoint"]),
    Case("export-olmo-core-narrow-experts-without-pad", lambda i, t: [
        "export-olmo-core", i.ck, out(t), "--layout", "default"], ["--pad"]),
    Case("upcycle-zero-experts", lambda i, t: [
        "upcycle", i.ck, out(t), "--experts", 0], ["--experts must be at least 1"]),
    Case("upcycle-a-moe", lambda i, t: [
        "upcycle", i.ck, out(t), "--experts", 2], ["dense"]),
    Case("export-hf-unreadable-shard-size", lambda i, t: [
        "export-hf", i.ck, out(t), "--max-shard-size", "huge"], ["cannot read size 'huge'"]),
    Case("import-hf-not-a-directory", lambda i, t: [
        "import-hf", t / "missing", out(t)], ["missing is not a directory"]),
    Case("tokenize-zero-workers", lambda i, t: [
        "tokenize", i.corpus, "--tokenizer", i.tokenizer, "--out", out(t), "--workers", 0],
        ["--workers must be at least 1"]),
    Case("tokenize-not-jsonl", lambda i, t: [
        "tokenize", i.scores, "--tokenizer", i.tokenizer, "--out", out(t)],
        ["scores.safetensors is not a JSONL file"]),
    Case("eval-unknown-task", lambda i, t: [
        "eval", i.ck, "--out", out(t), "--tasks", "gsm9k"], ["unknown task(s) ['gsm9k']"]),
    Case("demo-zero-jobs", lambda i, t: [
        "demo", "--out", out(t), "--jobs", 0], ["--jobs must be at least 1"]),
    Case("info-not-a-checkpoint", lambda i, t: ["info", t], ["is not a checkpoint"]),
    Case("train-unclosed-yaml-list", lambda i, t: [
        "train", TINY, "--model.block.feed_forward_moe.expert_widths=[96,32", "--dry-run"],
        ["override '--model.block.feed_forward_moe.expert_widths=[96,32'", "not valid YAML"]),
    Case("train-unknown-field", lambda i, t: [
        "train", TINY, "--trainer.save_fodler=/tmp/x", "--dry-run"], ["save_fodler"]),
    Case("train-wrong-value-type", lambda i, t: [
        "train", TINY, "--trainer.max_duration.value=abc", "--dry-run"], ["abc"]),
    Case("train-config-syntax-error", lambda i, t: [
        "train", config_file(t, "def build_config(:\n    pass\n")],
        ["config.py:1", "syntax error"]),
    Case("train-config-raises", lambda i, t: [
        "train", config_file(t, "import math\n\n\ndef build_config():\n    return math.sqrt(-1)\n")],
        ["config.py:5", "build_config() raised ValueError"]),
    Case("train-config-missing", lambda i, t: ["train", t / "nope.py"], ["nope.py does not exist"]),
    Case("plan-batch-does-not-split", lambda i, t: ["plan", TINY, "--world-size", "3"],
         ["cannot be split", "3 ranks"]),
    Case("plan-gpu-memory-not-understood", lambda i, t: ["plan", TINY, "--gpu-memory", "lots"],
         ["'lots'", "not understood"]),
    Case("plan-stray-argument", lambda i, t: ["plan", TINY, "stray"], ["'stray'", "overrides"]),
    Case("plan-config-missing", lambda i, t: ["plan", t / "nope.py"], ["nope.py does not exist"]),
]  # fmt: skip

DAMAGED_INPUTS = [
    # checkpoints
    Case("checkpoint-data-file-truncated", lambda i, t: [
        "info", damaged_ck(i, t, lambda c: (c / "__0_3.distcp").write_bytes((c / "__0_3.distcp").read_bytes()[:100]))],
        ["__0_3.distcp is truncated"]),
    Case("checkpoint-data-file-missing", lambda i, t: [
        "prune", damaged_ck(i, t, lambda c: (c / "__0_3.distcp").unlink()), "--scores", i.scores,
        "--widths", "64,16", "--out", out(t)], ["__0_3.distcp is missing"]),
    Case("checkpoint-data-file-corrupt", lambda i, t: [
        "export-hf", damaged_ck(i, t, lambda c: flip_bytes((c / "__0_3.distcp"), -200)), out(t)],
        ["__0_3.distcp", "is damaged"]),
    Case("checkpoint-hash-mismatch-info-verify", lambda i, t: [
        "info", damaged_ck(i, t, lambda c: flip_bytes((c / "__0_3.distcp"), -200)), "--verify"],
        ["__0_3.distcp does not have the SHA-256 recorded"]),
    Case("checkpoint-hash-mismatch-prune-verify", lambda i, t: [
        "prune", damaged_ck(i, t, lambda c: flip_bytes((c / "__0_5.distcp"), 300, b"\x00\x01")),
        "--scores", i.scores, "--widths", "64,16", "--out", out(t), "--verify"],
        ["__0_5.distcp does not have the SHA-256 recorded"]),
    Case("checkpoint-config-not-json", lambda i, t: [
        "info", damaged_ck(i, t, lambda c: (c / "config.json").write_text("{model"))],
        ["config.json is not valid JSON"]),
    Case("checkpoint-config-without-model", lambda i, t: [
        "opt-out", damaged_ck(i, t, lambda c: write_json(c / "config.json", {"olmo_flex": {}})),
        "--experts", 1, "--out", out(t)], ["config.json has no 'model' entry"]),
    Case("checkpoint-config-bad-model", lambda i, t: [
        "info", damaged_ck(i, t, lambda c: write_json(c / "config.json", {"model": {"d_model": "x"}}))],
        ["config.json holds no valid model config"]),
    Case("checkpoint-metadata-truncated", lambda i, t: [
        "merge", damaged_ck(i, t, lambda c: (c / ".metadata").write_bytes((c / ".metadata").read_bytes()[:64])),
        i.other, "--top-k", 2, "--out", out(t)], [".metadata is damaged"]),
    Case("checkpoint-metadata-not-dcp", lambda i, t: [
        "info", damaged_ck(i, t, lambda c: (c / ".metadata").write_bytes(b"\x80\x04K\x05."))],
        [".metadata is not DCP metadata"]),
    Case("checkpoint-metadata-missing", lambda i, t: [
        "info", damaged_ck(i, t, lambda c: (c / ".metadata").unlink())], ["is not a checkpoint"]),
    # importance scores
    Case("scores-nan", lambda i, t: [
        "prune", i.ck, "--scores", scores_with(i, t, float("nan")), "--widths", "64,16",
        "--out", out(t)], ["bad.safetensors: layer1.expert1", "neuron 3"]),
    Case("scores-infinite", lambda i, t: [
        "allocate", scores_with(i, t, float("inf")), "--budget-width", 16],
        ["bad.safetensors: layer1.expert1", "infinite"]),
    Case("scores-negative", lambda i, t: [
        "compare-scores", i.scores, scores_with(i, t, -1.0), "--width", 8],
        ["bad.safetensors: layer1.expert1", "negative"]),
    Case("scores-not-safetensors", lambda i, t: [
        "prune", i.ck, "--scores", write_json(t / "s.safetensors", "hello"), "--widths", "64,16",
        "--out", out(t)], ["s.safetensors is not a readable safetensors scores file"]),
    Case("scores-of-another-model", lambda i, t: [
        "prune", i.ck, "--scores", scores_of(i.other, i, t), "--widths", "64,16", "--out", out(t)],
        ["expert widths"]),
    # top-k stores (olmo-flex info --verify reads every row)
    Case("store-row-nan", lambda i, t: ["info", damaged_store(i, t, lambda c: raw_row(
        c, range(8), [np.nan] + [-1.0] * 7)), "--verify"],
        ["chunk-000001.bin row 5", "NaN log-probability"]),
    Case("store-row-id-out-of-range", lambda i, t: ["info", damaged_store(i, t, lambda c: raw_row(
        c, [512 + j for j in range(8)], [-1.0] * 8)), "--verify"],
        ["chunk-000001.bin row 5", "at or above the vocabulary size 512"]),
    Case("store-row-unsorted-ids", lambda i, t: ["info", damaged_store(i, t, lambda c: raw_row(
        c, [7, 6, 5, 4, 3, 2, 1, 0], [-1.0] * 8)), "--verify"],
        ["chunk-000001.bin row 5", "not in ascending order"]),
    Case("store-row-positive-logprob", lambda i, t: ["info", damaged_store(i, t, lambda c: raw_row(
        c, range(8), [3.0] + [-1.0] * 7)), "--verify"],
        ["chunk-000001.bin row 5", "positive log-probability"]),
    Case("store-row-wrong-number-of-ids", lambda i, t: ["info", damaged_store(i, t, lambda c: np.full(
        c.row_bytes, 255, np.uint8)), "--verify"], ["chunk-000001.bin row 5", "token ids instead of 8"]),
    Case("store-chunk-hash-mismatch", lambda i, t: ["info", damaged_store(
        i, t, lambda c: raw_row(c, range(8), [-1.0] * 8), keep_hashes=True), "--verify"],
        ["chunk-000001.bin does not have the SHA-256"]),
    Case("store-chunk-truncated", lambda i, t: ["info", damaged_store(
        i, t, meta_fn=lambda m: (Path(t / "store" / m["chunks"][0]["file"]).write_bytes(b"x")))],
        ["truncated or damaged", "chunk-000000.bin"]),
    Case("store-meta-damaged", lambda i, t: ["info", damaged_store(
        i, t, meta_fn=lambda m: m.pop("k"))], ["meta.json is damaged"]),
    # token files
    Case("tokens-above-vocabulary-logprobs", lambda i, t: [
        "logprobs", i.ck, "--data", token_copy(i, t, 777, 600), "--seq-len", SEQ, "--out", out(t)],
        ["part-01.npy: token 777 is id 600", "vocabulary of 512"]),
    Case("tokens-above-vocabulary-importance", lambda i, t: [
        "importance", i.ck, "--data", token_copy(i, t, 70, 513), "--seq-len", SEQ,
        "--num-seqs", 4, "--out", out(t)], ["part-01.npy: token 70 is id 513"]),
    Case("tokens-above-vocabulary-domain-embed", lambda i, t: [
        "domain-embed", i.ck, "--data", f"d={token_copy(i, t, 5, 9999)}", "--seq-len", SEQ,
        "--num-seqs", 64, "--out", out(t, "e.safetensors")], ["part-01.npy: token 5 is id 9999"]),
    Case("tokens-odd-size", lambda i, t: [
        "logprobs", i.ck, "--data", write_json(t / "odd.npy", "abc"), "--seq-len", SEQ,
        "--out", out(t)], ["odd.npy has 3 bytes"]),
    # transformers directories
    Case("hf-safetensors-truncated", lambda i, t: ["import-hf", hf_copy(i, t, lambda h: (
        h / "model.safetensors").write_bytes((h / "model.safetensors").read_bytes()[:5000])), out(t)],
        ["model.safetensors is not a readable safetensors file"]),
    Case("hf-config-not-json", lambda i, t: ["import-hf", hf_copy(
        i, t, lambda h: (h / "config.json").write_text("{")), out(t)], ["is not valid JSON"]),
    Case("hf-index-names-missing-shard", lambda i, t: ["import-hf", hf_copy(i, t, lambda h: write_json(
        h / "model.safetensors.index.json", {"weight_map": {"lm_head.weight": "model-2.safetensors"}})),
        out(t)], ["shard model-2.safetensors", "is missing"]),
    Case("hf-another-model-type", lambda i, t: ["import-hf", hf_copy(i, t, lambda h: write_json(
        h / "config.json", dict(json.loads((h / "config.json").read_text()), model_type="llama"))),
        out(t)], ["'llama'"]),
    # corpora, tokenizers, embeddings
    Case("jsonl-bad-line", lambda i, t: [
        "tokenize", write_json(t / "c.jsonl", '{"text": "a"}\n{"text": "b"}\n{oops\n'),
        "--tokenizer", i.tokenizer, "--out", out(t)], ["c.jsonl:3 is not valid JSON"]),
    Case("jsonl-missing-field", lambda i, t: [
        "tokenize", write_json(t / "c.jsonl", '{"body": "a"}\n'), "--tokenizer", i.tokenizer,
        "--out", out(t)], ["c.jsonl:1 has no string field 'text'"]),
    Case("tokenizer-file-damaged", lambda i, t: [
        "tokenize", i.corpus, "--tokenizer", damaged_file(i.tokenizer, t / "tok", lambda d: (
            d / "tokenizer.json").write_text("{}")), "--out", out(t)],
        ["tokenizer.json is not a readable tokenizer"]),
    Case("domain-embeddings-damaged", lambda i, t: [
        "merge", i.ck, i.other, "--top-k", 2, "--router-from", write_json(t / "e.safetensors", "x"),
        "--out", out(t)], ["e.safetensors is not a domain embeddings file"]),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_ARGUMENTS + DAMAGED_INPUTS, ids=lambda c: c.name)
def test_refused_with_one_error_and_nothing_written(
    case, guarantee_inputs, tmp_path, capfd, monkeypatch
):
    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(guarantee_inputs.root.parent / "dataroot"))
    check_case(case, guarantee_inputs, tmp_path / "case", capfd, monkeypatch)


def test_cases_cover_every_command():
    from test_docs_names import subcommands

    used = {c.setup.__code__.co_consts for c in BAD_ARGUMENTS + DAMAGED_INPUTS}
    names = {x for consts in used for x in consts if isinstance(x, str)}
    missing = set(subcommands()) - names - {"models"}  # `models` reads no file and writes none
    assert not missing, f"no refusal case for {sorted(missing)}"


def test_tokens_check_names_the_position_in_any_window(tmp_path):
    """The vocabulary check runs on every window read, not just the first ones of each file."""
    from olmo_flex_ext.data.tokens import TokenFiles

    path = tmp_path / "t.npy"
    arr = np.arange(5000, dtype=np.uint16) % 100
    arr[4321] = 100
    arr.tofile(path)
    files = TokenFiles([str(path)], np.uint16, vocab_size=100)
    with pytest.raises(Exception, match="token 4,321 is id 100"):
        for w in files.windows(64, partial=True):
            files.read(w)


def test_logprobs_takes_a_tokenizer_directory_and_records_it(guarantee_inputs, tmp_path, capfd):
    """A store for a model with its own tokenizer (like the demo's 1024-token BPE): the
    directory's identity goes into meta.json, and the KD data check accepts exactly it."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from guarantees_helpers import run_inprocess
    from prune_helpers import tiny_checkpoint

    from olmo_flex_ext.data.synthetic import TINY_TOKENIZER, ensure_synthetic_tokens
    from olmo_flex_ext.data.tokenizers import tokenizer_from_dir
    from olmo_flex_ext.distill import TopKStore, TopKStoreError
    from olmo_flex_ext.distill.topk_store import tokenizer_identity

    tok = tokenizer_from_dir(guarantee_inputs.tokenizer)
    ck = tiny_checkpoint(tmp_path / "ck", [32, 16], vocab_size=tok.padded_vocab_size())
    data = ensure_synthetic_tokens(
        tmp_path / "data", vocab_size=tok.vocab_size, tokens_per_file=512
    )
    out = tmp_path / "store"
    code, _, err = run_inprocess(["logprobs", ck, "--data", ",".join(data), "--seq-len", 64,
                                  "--top-k", 4, "--tokenizer", guarantee_inputs.tokenizer,
                                  "--out", out], capfd)  # fmt: skip
    assert code == 0, err
    store = TopKStore(out)
    assert store.tokenizer == tokenizer_identity(tok)
    assert store.tokenizer["identifier"] == str(guarantee_inputs.tokenizer.resolve())
    from olmo_flex_ext.data.tokens import TokenFiles

    files = TokenFiles(data, np.uint16).fingerprint()
    store.check_compatible(token_files=files, sequence_length=64, tokenizer=tok)
    with pytest.raises(TopKStoreError, match="another tokenizer"):
        store.check_compatible(token_files=files, sequence_length=64, tokenizer=TINY_TOKENIZER)
