"""Top-k store: codec, generation against an independent top-k, resume, validation errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import save_model
from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.data.tokens import TokenFiles
from olmo_flex_ext.distill import TopKStore, TopKStoreError
from olmo_flex_ext.distill.codec import TopKCodec
from olmo_flex_ext.distill.data import TopKFSLDatasetConfig
from olmo_flex_ext.distill.generate import generate_store, partial_dir
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import TINY_TOKENIZER

SEQ, K, CHUNK = 64, 16, 8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    torch.manual_seed(0)
    config = tiny_flex([64, 32])
    model = config.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    with torch.no_grad():  # spread the logits: a fresh model's near-ties would make top-k fragile
        model.lm_head.w_out.weight.mul_(50)
    teacher = save_model(root / "teacher", config, model.state_dict())
    # 3000 tokens per file: 46 full windows of 64 and a 56-token tail each
    data = ensure_synthetic_tokens(root / "data", vocab_size=512, num_files=2, tokens_per_file=3000)
    store = generate_store(
        teacher,
        data,
        seq_len=SEQ,
        k=K,
        out=root / "store",
        tokenizer=TINY_TOKENIZER,
        windows_per_chunk=CHUNK,
        progress=False,
    )
    return dict(root=root, teacher=teacher, data=data, store=store)


@pytest.mark.parametrize("vocab,k", [(100352, 128), (50304, 128), (512, 512), (300, 1)])
def test_codec_round_trip(vocab, k):
    rng = np.random.default_rng(vocab + k)
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(64)])
    lps = (rng.standard_normal((64, k)) * 5 - 8).astype(np.float32)
    lps[0, 0] = -np.inf
    codec = TopKCodec(vocab, k)
    got_ids, got_lps = codec.decode(codec.encode(ids, lps))
    order = np.argsort(ids, axis=1)
    assert np.array_equal(got_ids, np.take_along_axis(ids, order, 1))
    bf16 = torch.from_numpy(lps).bfloat16().float().numpy()
    assert np.array_equal(got_lps, np.take_along_axis(bf16, order, 1))
    if (vocab, k) == (100352, 128):
        assert codec.row_bytes == 441  # goal: at most 528 bytes per token
    assert codec.row_bytes < int(np.ceil(np.log2(vocab))) * k / 8 + 2 * k + 1


def test_store_equals_independent_topk(env):
    store, files = env["store"], TokenFiles(env["data"], np.uint16)
    assert store.num_tokens == files.num_tokens == 6000 and store.k == K
    assert store.token_files == files.fingerprint()
    model = load_model(str(env["teacher"]))
    for f in range(2):  # every window of each file, by hand, the tail as one shorter window
        tokens = torch.from_numpy(files.array(f).astype(np.int64))
        for start in range(0, len(tokens), SEQ):
            x = tokens[start : start + SEQ]
            with torch.no_grad():
                lp = F.log_softmax(model(x[None])[0].double(), -1)
            want_lps, want_ids = lp.topk(K, -1)
            ids, lps = store.read(int(files.offsets[f]) + start, len(x))
            assert np.array_equal(np.sort(want_ids.numpy(), 1), ids)
            want_sorted = np.take_along_axis(want_lps.numpy(), np.argsort(want_ids.numpy(), 1), 1)
            np.testing.assert_allclose(lps, want_sorted, rtol=2**-8, atol=1e-6)
    # reads across chunk and file boundaries equal the concatenation of smaller reads
    a = store.read(500, 3000)
    b = [store.read(500 + i, 100) for i in range(0, 3000, 100)]
    assert np.array_equal(a[0], np.concatenate([x[0] for x in b]))


def test_resume_after_interruption_is_identical(env, tmp_path):
    out = tmp_path / "store"
    kw = dict(
        seq_len=SEQ, k=K, out=out, tokenizer=TINY_TOKENIZER, windows_per_chunk=CHUNK, progress=False
    )
    assert generate_store(env["teacher"], env["data"], max_chunks=3, **kw) is None
    work = partial_dir(out)
    assert not out.exists() and len(list(work.glob("chunk-*.bin"))) == 3
    (work / ".chunk-000003.bin.tmp-999").write_bytes(b"half a chunk from a killed writer")
    with pytest.raises(TopKStoreError, match="other settings"):
        generate_store(env["teacher"], env["data"], **{**kw, "k": 8})
    # finish on two ranks through the command line
    env_vars = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "olmo_flex_ext.cli",
        "logprobs",
        str(env["teacher"]),
        "--data",
        ",".join(env["data"]),
        "--seq-len",
        str(SEQ),
        "--top-k",
        str(K),
        "--out",
        str(out),
        "--chunk-windows",
        str(CHUNK),
        "--tokenizer",
        "tiny",
    ]
    proc = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not work.exists()
    ref = env["store"].path
    assert json.loads((out / "meta.json").read_text()) == json.loads(
        (ref / "meta.json").read_text()
    )
    for f in sorted(ref.glob("chunk-*.bin")):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


def _dataset(env, **kw):
    args = dict(
        paths=env["data"],
        sequence_length=SEQ,
        tokenizer=TINY_TOKENIZER,
        topk_store=str(env["store"].path),
    )
    return TopKFSLDatasetConfig(**{**args, **kw})


def test_dataset_validates_store(env, tmp_path):
    from olmo_core.data import TokenizerConfig

    _dataset(env).build()
    with pytest.raises(TopKStoreError, match="sequence_length=32"):
        _dataset(env, sequence_length=32).build()
    with pytest.raises(TopKStoreError, match="top 16 tokens per position but top_k=8"):
        _dataset(env, top_k=8).build()
    other_tok = TokenizerConfig(vocab_size=512, eos_token_id=2, pad_token_id=1)
    with pytest.raises(TopKStoreError, match="another tokenizer.*eos_token_id"):
        _dataset(env, tokenizer=other_tok).build()
    other = ensure_synthetic_tokens(
        tmp_path / "other", vocab_size=512, num_files=2, tokens_per_file=3000, seed=5
    )
    with pytest.raises(TopKStoreError, match="other token files.*different content"):
        _dataset(env, paths=other).build()
    with pytest.raises(TopKStoreError, match="vocabulary of 512 but the model has 1,024"):
        env["store"].check_compatible(
            token_files=env["store"].token_files, sequence_length=SEQ, vocab_size=1024
        )


def test_damaged_or_unfinished_store(env, tmp_path):
    bad = tmp_path / "store"
    shutil.copytree(env["store"].path, bad)
    chunk = bad / "chunk-000004.bin"
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with pytest.raises(TopKStoreError, match="truncated or damaged: chunk-000004.bin"):
        TopKStore(bad)
    (bad / "meta.json").unlink()
    with pytest.raises(TopKStoreError, match="not a top-k store"):
        TopKStore(bad)
    with pytest.raises(TopKStoreError, match="already exists"):
        generate_store(
            env["teacher"],
            env["data"],
            seq_len=SEQ,
            k=K,
            out=env["store"].path,
            tokenizer=TINY_TOKENIZER,
            progress=False,
        )
