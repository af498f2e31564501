"""Long jobs survive being killed: a command killed with SIGKILL at a random point and run again
finishes with exactly the output of an uninterrupted run, leaving nothing behind (the killed
run's lock is taken over with a note, its temp files removed). What an earlier run left is
checked before it is reused: a damaged chunk, partial or token file is computed again with a note
instead of failing every rerun. A training run killed mid-way resumes bitwise; a bad store row
stops training with one error naming it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from guarantees_helpers import (
    REPO,
    SEQ,
    assert_refused,
    cli_command,
    cli_env,
    copy,
    error_lines,
    flip_bytes,
    run_inprocess,
    snapshot,
    wait_for,
)

RNG = random.Random(12)  # the random kill points; fixed so that a failure can be replayed


def killed_midway(argv: List, started, extra_delay: float, timeout: float = 300) -> int:
    """Start ``olmo-flex ARGV``, wait until ``started()`` (or it exits), wait ``extra_delay``
    seconds more and SIGKILL it and its children. Returns its exit status (-9 when killed)."""
    p = subprocess.Popen(cli_command(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=cli_env(), cwd=REPO, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: started() or p.poll() is not None, timeout, f"{argv[0]} to start work")
        try:
            p.wait(extra_delay)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return p.returncode


def only(folder: Path, *names: str) -> None:
    """``folder`` holds exactly ``names`` (no lock, temp or partial left)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens

    return ensure_synthetic_tokens(tmp_path_factory.mktemp("long") / "data", vocab_size=512,
                                   num_files=2, tokens_per_file=12288)  # fmt: skip


def logprobs_args(i, data, out):
    glob = str(Path(data[0]).parent / "*.npy")
    return ["logprobs", i.ck, "--data", glob, "--seq-len", SEQ, "--top-k", 8, "--tokenizer",
            "tiny", "--chunk-windows", 4, "--batch-size", 2, "--out", out]  # fmt: skip


@pytest.fixture(scope="module")
def reference_store(guarantee_inputs, long_data, tmp_path_factory):
    from olmo_flex_ext.data.synthetic import TINY_TOKENIZER
    from olmo_flex_ext.distill.generate import generate_store

    out = tmp_path_factory.mktemp("ref") / "store"
    generate_store(guarantee_inputs.ck, long_data, seq_len=SEQ, k=8, out=out, tokenizer=TINY_TOKENIZER,
                   batch_size=2, windows_per_chunk=4, progress=False)  # fmt: skip
    return out


def same_store(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    for m in (ma, mb):
        m["generation"].pop("olmo_flex_ext", None)
    assert ma == mb
    for c in ma["chunks"]:
        assert (a / c["file"]).read_bytes() == (b / c["file"]).read_bytes()


def test_logprobs_killed_then_rerun_gives_the_same_store(
    guarantee_inputs, long_data, reference_store, tmp_path, capfd
):
    out = tmp_path / "store"
    args = logprobs_args(guarantee_inputs, long_data, out)
    partial = tmp_path / ".store.partial"
    code = killed_midway(
        args, lambda: len(list(partial.glob("chunk-*.sha256"))) >= 2, RNG.uniform(0, 0.5)
    )
    assert code == -signal.SIGKILL, "the run finished before it could be killed; give it more work"
    assert (tmp_path / ".store.lock").exists()  # what a killed run leaves
    code, _, err = run_inprocess(args, capfd)
    assert code == 0, err
    assert "note: took over the lock" in err
    same_store(out, reference_store)
    only(tmp_path, "store")


def test_logprobs_recomputes_damaged_chunks_of_an_unfinished_store(
    guarantee_inputs, long_data, reference_store, tmp_path, capfd
):
    from olmo_flex_ext.data.synthetic import TINY_TOKENIZER
    from olmo_flex_ext.distill.generate import generate_store

    out = tmp_path / "store"
    assert generate_store(guarantee_inputs.ck, long_data, seq_len=SEQ, k=8, out=out,
                          tokenizer=TINY_TOKENIZER, batch_size=2, windows_per_chunk=4,
                          max_chunks=6, progress=False) is None  # fmt: skip
    partial = tmp_path / ".store.partial"
    flip_bytes(partial / "chunk-000001.bin", 100, b"\x00\xff")  # changed after it was written
    (partial / "chunk-000002.sha256").unlink()  # killed between the chunk and its hash
    (partial / "chunk-000003.bin").write_bytes(b"short")
    code, _, err = run_inprocess(logprobs_args(guarantee_inputs, long_data, out), capfd)
    assert code == 0, err
    for c, why in [(1, "does not match its recorded hash"), (2, "has no recorded hash"),
                   (3, "has the wrong size")]:  # fmt: skip
        assert f"note: {partial / f'chunk-00000{c}.bin'} {why}: computing it again" in err
    same_store(out, reference_store)
    only(tmp_path, "store")


def test_logprobs_unfinished_store_of_other_settings(guarantee_inputs, long_data, tmp_path, capfd):
    from olmo_flex_ext.data.synthetic import TINY_TOKENIZER
    from olmo_flex_ext.distill.generate import generate_store

    out = tmp_path / "store"
    generate_store(guarantee_inputs.ck, long_data, seq_len=SEQ, k=4, out=out, tokenizer=TINY_TOKENIZER,
                   windows_per_chunk=4, max_chunks=2, progress=False)  # fmt: skip
    args = logprobs_args(guarantee_inputs, long_data, out)
    before = snapshot(tmp_path)
    code, _, err = run_inprocess(args, capfd)
    assert_refused(code, err, ["holds an unfinished store made with other settings (batch_size, encoding, k)",
                               "pass --overwrite to discard it"])  # fmt: skip
    assert snapshot(tmp_path) == before
    code, _, err = run_inprocess(args + ["--overwrite"], capfd)
    assert code == 0 and "note: discarding the unfinished store" in err
    only(tmp_path, "store")


def importance_args(i, data, out):
    glob = str(Path(data[0]).parent / "*.npy")
    return ["importance", i.ck, "--data", glob, "--seq-len", SEQ, "--num-seqs", 600,
            "--save-every", 8, "--out", out]  # fmt: skip


@pytest.fixture(scope="module")
def reference_scores(guarantee_inputs, long_data):
    from olmo_flex_ext.prune.importance import checkpoint_importance

    return checkpoint_importance(guarantee_inputs.ck, long_data, seq_len=SEQ, num_seqs=600,
                                 save_every=8, progress=False)  # fmt: skip


def same_scores(path: Path, reference) -> None:
    from olmo_flex_ext.prune.scores import ImportanceScores

    got = ImportanceScores.load(path)
    for a, b in zip(got.scores, reference.scores):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_importance_killed_then_rerun_gives_the_same_scores(
    guarantee_inputs, long_data, reference_scores, tmp_path, capfd
):
    out = tmp_path / "s.safetensors"
    args = importance_args(guarantee_inputs, long_data, out)
    partial = tmp_path / ".s.safetensors.partial.pt"
    code = killed_midway(args, partial.exists, RNG.uniform(0, 0.3))
    assert code == -signal.SIGKILL, "the run finished before it could be killed; give it more work"
    code, _, err = run_inprocess(args, capfd)
    assert code == 0, err
    same_scores(out, reference_scores)
    only(tmp_path, "s.safetensors")


def test_importance_ignores_a_damaged_partial(
    guarantee_inputs, long_data, reference_scores, tmp_path, capfd
):
    out = tmp_path / "s.safetensors"
    (tmp_path / ".s.safetensors.partial.pt").write_bytes(b"PK\x03\x04 not a zip")
    code, _, err = run_inprocess(importance_args(guarantee_inputs, long_data, out), capfd)
    assert code == 0 and "note: ignoring the partial scores" in err and "damaged" in err
    same_scores(out, reference_scores)
    only(tmp_path, "s.safetensors")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "12", "+", "7", "="]
    for f in range(4):
        with open(d / f"c{f}.jsonl", "w") as fh:
            for _ in range(6000):
                fh.write(json.dumps({"text": " ".join(rng.choice(words, 30))}) + "\n")
    return d


def test_tokenize_killed_then_rerun_gives_the_same_files(guarantee_inputs, corpus, tmp_path, capfd):
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["tokenize", str(corpus / "*.jsonl"), "--tokenizer", guarantee_inputs.tokenizer]
    assert run_inprocess(args + ["--out", ref], capfd)[0] == 0
    code = killed_midway(
        args + ["--out", out], lambda: any(out.glob("part-*")), RNG.uniform(0, 0.5)
    )
    code, _, err = run_inprocess(args + ["--out", out], capfd)
    assert code == 0, err
    for f in ref.iterdir():
        if f.name != "meta.json":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    only(out, *[p.name for p in ref.iterdir()])
    only(tmp_path, "ref", "out")


def test_tokenize_redoes_a_damaged_file_of_an_earlier_run(
    guarantee_inputs, corpus, tmp_path, capfd
):
    out = tmp_path / "out"
    args = [
        "tokenize",
        str(corpus / "*.jsonl"),
        "--tokenizer",
        guarantee_inputs.tokenizer,
        "--out",
        out,
    ]
    assert run_inprocess(args, capfd)[0] == 0
    reference = snapshot(out)
    meta = (out / "meta.json").read_text()
    (out / "meta.json").unlink()  # as if killed before the end
    (out / ".progress.json").write_text(
        json.dumps(
            {
                "settings": {
                    k: v
                    for k, v in json.loads(meta).items()
                    if k not in ("files", "num_documents", "num_tokens")
                },
                "files": {
                    f["name"]: {"documents": f["documents"], "tokens": f["tokens"]}
                    for f in json.loads(meta)["files"]
                },
            }
        )
    )
    damaged = sorted(out.glob("part-*"))[1]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    code, _, err = run_inprocess(args, capfd)
    assert code == 0 and f"note: {damaged} is not the size an earlier run recorded" in err
    assert snapshot(out) == reference


def same_output(a: Path, b: Path) -> None:
    """The same files holding the same tensors and configs (a DCP's ``.metadata`` records where
    and when it was written, so it is compared through what it describes)."""
    from safetensors.torch import load_file

    from olmo_flex_ext import load_model

    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    if (a / ".metadata").exists():
        x, y = load_model(a).state_dict(), load_model(b).state_dict()
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        return
    for f in a.iterdir():
        if f.suffix == ".safetensors":
            x, y = load_file(f), load_file(b / f.name)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        else:
            assert f.read_bytes() == (b / f.name).read_bytes(), f.name


@pytest.mark.parametrize("command", ["prune", "export-hf", "merge"])
def test_streaming_writer_killed_at_a_random_point_then_rerun(
    command, guarantee_inputs, tmp_path, capfd
):
    i = guarantee_inputs
    ref, out, twin = tmp_path / "ref", tmp_path / "out", tmp_path / "twin"
    copy(i.ck, twin)  # merge: the model and a copy of it (their shared weights are equal)
    args = {
        "prune": lambda o: [
            "prune",
            i.ck,
            "--scores",
            i.scores,
            "--widths-file",
            i.widths,
            "--out",
            o,
        ],
        "export-hf": lambda o: ["export-hf", i.ck, o, "--max-shard-size", "20KB"],
        "merge": lambda o: ["merge", i.ck, twin, "--top-k", 1, "--out", o],
    }[command]
    assert run_inprocess(args(ref), capfd)[0] == 0
    killed_midway(args(out), lambda: True, RNG.uniform(1.0, 6.0))
    code, _, err = run_inprocess(args(out), capfd)
    if code == 2:  # the killed run had finished: the output is there and complete
        assert "already exists" in err
    else:
        assert code == 0, err
    same_output(out, ref)
    only(tmp_path, "ref", "out", "twin")


# ---- training ------------------------------------------------------------------------------------

CONFIG = """
from olmo_core.train import Duration

from olmo_flex_ext.data.synthetic import TINY_TOKENIZER
from olmo_flex_ext.models import tiny_flex
from olmo_flex_ext.recipes import flex_experiment, with_distillation


def build_config():
    config = flex_experiment(
        model={model}, data_paths={data!r}, tokenizer=TINY_TOKENIZER, save_folder="unset",
        sequence_length={seq}, global_batch_tokens=8 * {seq}, microbatch_tokens=4 * {seq},
        max_duration=Duration.steps({steps}), lr=1e-2, save_interval={save}, wandb_project=None,
        metrics_collect_interval=1, load_path={load_path!r},
    )
    return {wrap}
"""


def write_config(path: Path, data, *, steps: int, save: int, store=None, teacher=None,
                 load_path=None, model="tiny_flex([64, 32], d_model=32, n_heads=2)") -> Path:  # fmt: skip
    wrap = (
        "config"
        if store is None
        else f"with_distillation(config, store={str(store)!r}, teacher_path={str(teacher)!r})"
    )
    path.write_text(CONFIG.format(model=model, data=list(data), seq=SEQ, steps=steps, save=save,
                                  load_path=load_path and str(load_path), wrap=wrap))  # fmt: skip
    return path


def launch(config: Path, folder: Path, timeout: float = 600, **popen):
    cmd = [
        sys.executable,
        "-m",
        "olmo_flex_ext.launch",
        str(config),
        f"--trainer.save_folder={folder}",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=REPO, **popen)  # fmt: skip


@pytest.mark.slow
def test_training_killed_then_relaunched_resumes_bitwise(guarantee_inputs, tmp_path):
    from olmo_flex_ext import load_model

    config = write_config(tmp_path / "cfg.py", guarantee_inputs.data, steps=12, save=3)
    whole = launch(config, tmp_path / "whole")
    p = launch(config, tmp_path / "run", start_new_session=True)
    wait_for(lambda: (tmp_path / "run" / "step6").exists() or p.poll() is not None, 300, "step6")
    assert p.poll() is None, p.communicate()[1]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert (tmp_path / ".run.lock").exists()
    again = launch(config, tmp_path / "run")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "note: took over the lock" in err and "Loading checkpoint from" in out + err
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    a, b = load_model(tmp_path / "run").state_dict(), load_model(tmp_path / "whole").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.slow
def test_bad_store_row_stops_training_with_one_error(guarantee_inputs, tmp_path):
    from olmo_flex_ext.distill import TopKStore

    i = guarantee_inputs
    store = copy(i.store, tmp_path / "store")
    s = TopKStore(store)
    for c in s.chunks:  # a NaN log-prob in every window, so the first batch meets one
        rows = np.memmap(store / c["file"], dtype=np.uint8, mode="r+").reshape(
            -1, s.codec.row_bytes
        )
        rows[5::SEQ, s.codec.id_bytes : s.codec.id_bytes + 2] = [0xC0, 0x7F]
        rows.flush()
    config = write_config(tmp_path / "cfg.py", i.data, steps=4, save=100, store=store, teacher=i.ck,
                          load_path=i.ck)  # fmt: skip
    p = launch(config, tmp_path / "run")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"top-k store {store} is damaged" in lines[0] and "row" in lines[0]
    assert "NaN log-probability" in lines[0]
    assert not (tmp_path / ".run.lock").exists()
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
