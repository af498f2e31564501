"""Outputs: never an input (even with --overwrite), never of the wrong kind or unwritable, one
writer at a time (a lock beside the output naming its holder), --overwrite keeps the old output
until the new one is complete, and a failing command prints one line and nothing else."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from guarantees_helpers import (
    REPO,
    Case,
    assert_refused,
    check_case,
    cli_command,
    cli_env,
    error_lines,
    run_inprocess,
    run_subprocess,
    snapshot,
    tree_diff,
    wait_for,
)

FROM_CHECKPOINT = str(REPO / "train_configs" / "tiny_from_checkpoint.py")


def prune(i, out, *extra):
    return ["prune", i.ck, "--scores", i.scores, "--widths", "64,16", "--out", out, *extra]


def symlink(t: Path, target: Path) -> Path:
    link = t / "link"
    link.symlink_to(target)
    return link


def existing_dir(t: Path) -> Path:
    d = t / "out"
    d.mkdir()
    (d / "keep.txt").write_text("the user's")
    return d


def existing_file(t: Path, name: str = "out") -> Path:
    f = t / name
    f.write_text("the user's")
    return f


def foreign_lock(out: Path, age: float = 0.0) -> Path:
    """A lock of ``out`` held by a process on another host (refreshed ``age`` seconds ago)."""
    lock = out.parent / f".{out.name}.lock"
    lock.write_text(json.dumps({"host": "gpu-node-17", "pid": 4242, "command": "olmo-flex prune",
                                "since": "2026-01-01 00:00:00", "token": "x"}))  # fmt: skip
    if age:
        os.utime(lock, (time.time() - age, time.time() - age))
    return out


CONFLICTS = [
    Case("prune-out-is-the-run-folder", lambda i, t: [
        "prune", i.run, "--scores", i.scores, "--widths", "64,16", "--out", i.run, "--overwrite"],
        ["output {root}/run is the input {root}/run", "even with --overwrite"]),
    Case("opt-out-out-is-the-run-folder", lambda i, t: [
        "opt-out", i.run, "--experts", 1, "--out", i.run, "--overwrite"],
        ["is the input {root}/run"]),
    Case("prune-out-inside-the-run-folder", lambda i, t: [
        "prune", i.run, "--scores", i.scores, "--widths", "64,16", "--out", i.run / "pruned"],
        ["is inside the input {root}/run"]),
    Case("opt-out-out-is-the-resolved-step", lambda i, t: [
        "opt-out", i.run, "--experts", 1, "--out", i.run / "step2", "--overwrite"],
        ["is inside the input {root}/run"]),
    Case("export-hf-out-inside-the-checkpoint", lambda i, t: [
        "export-hf", i.ck, i.ck / "hf"], ["is inside the input {root}/ck"]),
    Case("import-hf-out-inside-the-hf-directory", lambda i, t: [
        "import-hf", i.hf, i.hf / "imported"], ["is inside the input {root}/hf"]),
    Case("importance-out-is-a-token-file", lambda i, t: [
        "importance", i.ck, "--data", i.glob, "--seq-len", 32, "--num-seqs", 2,
        "--out", i.data[0], "--overwrite"], ["is the input {root}/data/part-00.npy"]),
    Case("logprobs-out-contains-the-token-files", lambda i, t: [
        "logprobs", i.ck, "--data", i.glob, "--seq-len", 32, "--out", i.root / "data",
        "--overwrite"], ["contains the input {root}/data/part-00.npy"]),
    Case("domain-embed-out-is-a-token-file", lambda i, t: [
        "domain-embed", i.ck, "--data", i.glob, "--seq-len", 32, "--num-seqs", 2,
        "--out", i.data[1], "--overwrite"], ["is the input {root}/data/part-01.npy"]),
    Case("domain-router-out-is-a-token-file", lambda i, t: [
        "domain-router", i.ck, "--data", i.glob, "--public-data", i.glob, "--seq-len", 32,
        "--num-seqs", 2, "--out", i.data[1], "--overwrite"], ["is the input {root}/data/part-01.npy"]),
    Case("merge-out-is-an-input", lambda i, t: [
        "merge", i.ck, i.other, "--top-k", 2, "--out", i.other, "--overwrite"],
        ["is the input {root}/other"]),
    Case("merge-out-is-the-router-file", lambda i, t: [
        "merge", i.ck, i.other, "--top-k", 2, "--router-from", i.emb, "--out", i.emb,
        "--overwrite"], ["is the input {root}/emb.safetensors"]),
    Case("tokenize-out-contains-the-corpus", lambda i, t: [
        "tokenize", i.corpus, "--tokenizer", i.tokenizer, "--out", i.corpus.parent],
        ["contains the input {root}/corpus/docs.jsonl"]),
    Case("export-hf-out-is-the-tokenizer", lambda i, t: [
        "export-hf", i.ck, i.tokenizer, "--tokenizer", i.tokenizer, "--overwrite"],
        ["is the input {root}/tokenizer"]),
    Case("upcycle-out-is-the-dense-model", lambda i, t: [
        "upcycle", i.ck, i.ck, "--experts", 2, "--overwrite"], ["is the input {root}/ck"]),
    Case("export-olmo-core-out-inside-the-run-folder", lambda i, t: [
        "export-olmo-core", i.run, i.run / "stock", "--layout", "dropless"],
        ["is inside the input {root}/run"]),
    Case("eval-out-inside-the-checkpoint", lambda i, t: [
        "eval", i.ck, "--out", i.ck / "eval"], ["is inside the input {root}/ck"]),
    Case("allocate-out-is-the-scores", lambda i, t: [
        "allocate", i.scores, "--budget-width", 16, "--out", i.scores, "--overwrite"],
        ["is the input {root}/scores.safetensors"]),
    Case("prune-out-is-a-symlink-to-the-input", lambda i, t: prune(
        i, symlink(t, i.ck), "--overwrite"), ["output {tmp}/link is the input {root}/ck"]),
    Case("prune-out-exists", lambda i, t: prune(i, existing_dir(t)),
         ["output {tmp}/out already exists", "--overwrite"]),
    Case("importance-out-is-a-directory", lambda i, t: [
        "importance", i.ck, "--data", i.glob, "--seq-len", 32, "--num-seqs", 2,
        "--out", existing_dir(t), "--overwrite"], ["output {tmp}/out is a directory"]),
    Case("prune-out-is-a-file", lambda i, t: prune(i, existing_file(t), "--overwrite"),
         ["output {tmp}/out is a file"]),
    Case("allocate-out-exists", lambda i, t: [
        "allocate", i.scores, "--budget-width", 16, "--out", existing_file(t, "w.json")],
        ["w.json already exists"]),
    Case("compare-scores-json-exists", lambda i, t: [
        "compare-scores", i.scores, i.scores, "--width", 8, "--json", existing_file(t, "c.json")],
        ["c.json already exists"]),
    Case("output-folder-is-a-file", lambda i, t: prune(i, existing_file(t, "f") / "out"),
         ["{tmp}/f is a file, not a folder"]),
    Case("output-folder-cannot-be-created", lambda i, t: prune(i, "/proc/olmo-flex-test/out"),
         ["cannot create the folder /proc/olmo-flex-test"]),
    Case("output-folder-not-writable", lambda i, t: prune(i, "/proc/olmo-flex-test-out"),
         ["cannot write to /proc"]),
    Case("output-locked-by-another-host", lambda i, t: prune(i, foreign_lock(t / "out")),
         ["{tmp}/out is being written by another process", "pid 4242 on gpu-node-17",
          "delete {tmp}/.out.lock"]),
    Case("importance-locked-by-another-host", lambda i, t: [
        "importance", i.ck, "--data", i.glob, "--seq-len", 32, "--num-seqs", 2,
        "--out", foreign_lock(t / "s.safetensors")], ["pid 4242 on gpu-node-17"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CONFLICTS, ids=lambda c: c.name)
def test_output_conflict_refused(case, guarantee_inputs, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(guarantee_inputs.root.parent / "dataroot"))
    check_case(case, guarantee_inputs, tmp_path / "case", capfd, monkeypatch)


# ---- one writer --------------------------------------------------------------------------------

HOLDER = """
import sys, time
from olmo_flex_ext.outputs import claim_output
with claim_output(sys.argv[1], command="olmo-flex prune (holder)", resume=True):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def live_holder(tmp_path):
    """Start a process that holds the lock of an output; yields a function taking the path."""
    procs = []

    def hold(out: Path) -> int:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                             text=True, env=cli_env())  # fmt: skip
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        return p.pid

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_second_writer_refused_while_the_first_lives(
    guarantee_inputs, tmp_path, capfd, live_holder
):
    i, out = guarantee_inputs, tmp_path / "out"
    pid = live_holder(out)
    before = snapshot(i.root, tmp_path)
    code, _, err = run_inprocess(prune(i, out, "--overwrite"), capfd)
    assert_refused(code, err, [f"{out} is being written by another process", f"pid {pid} on",
                               "olmo-flex prune (holder)"])  # fmt: skip
    assert not tree_diff(before, snapshot(i.root, tmp_path))


def test_second_training_on_a_live_run_folder_refused_before_building(
    guarantee_inputs, tmp_path, capfd, monkeypatch, live_holder
):
    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(guarantee_inputs.root.parent / "dataroot"))
    run = tmp_path / "run"
    pid = live_holder(run)
    before = snapshot(guarantee_inputs.root, tmp_path)
    code, out, err = run_inprocess(
        [
            "train",
            FROM_CHECKPOINT,
            f"--load_path={guarantee_inputs.ck}",
            f"--trainer.save_folder={run}",
        ],
        capfd,
    )
    assert_refused(code, err, [f"{run} is being written by another process", f"pid {pid}"])
    assert "Building" not in out and not tree_diff(
        before, snapshot(guarantee_inputs.root, tmp_path)
    )


def test_two_writers_started_together_one_wins(guarantee_inputs, tmp_path):
    """The reported failure: two prunes to one output both exited 0, one silently replacing the
    other. Now one writes it and the other stops with one error line (busy, or already there)."""
    i, out = guarantee_inputs, tmp_path / "out"
    procs = [subprocess.Popen(cli_command(prune(i, out)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=cli_env()) for _ in range(2)]  # fmt: skip
    results = [(p.wait(300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert_refused(2, err, [str(out)])
    assert "being written by another process" in err or "already exists" in err
    from olmo_flex_ext import load_model

    reference = tmp_path / "reference"
    assert run_subprocess(prune(i, reference))[0] == 0
    a, b = load_model(out).state_dict(), load_model(reference).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reference"]


def test_training_waits_for_a_lock_of_another_host_and_refuses_a_live_one(
    guarantee_inputs, tmp_path, capfd, monkeypatch
):
    """A relaunch whose rank 0 lands on another host waits until the old lock has either been
    refreshed (a live run: refused) or gone stale (taken over), instead of refusing at once."""
    import threading

    from olmo_flex_ext import outputs

    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(guarantee_inputs.root.parent / "dataroot"))
    monkeypatch.setattr(outputs, "STALE_AFTER", 1.5)
    monkeypatch.setattr(outputs, "HEARTBEAT", 0.2)
    run = foreign_lock(tmp_path / "run")
    lock, stop = tmp_path / ".run.lock", threading.Event()

    def refresh():  # the live run on the other host
        while not stop.wait(0.1):
            os.utime(lock)

    threading.Thread(target=refresh, daemon=True).start()
    before = snapshot(guarantee_inputs.root)
    try:
        code, out, err = run_inprocess(
            [
                "train",
                FROM_CHECKPOINT,
                f"--load_path={guarantee_inputs.ck}",
                f"--trainer.save_folder={run}",
            ],
            capfd,
        )
    finally:
        stop.set()
    assert "waiting" in err and "pid 4242 on gpu-node-17" in err
    assert_refused(
        code, "\n".join(error_lines(err)), [f"{run} is being written by another process"]
    )
    assert snapshot(guarantee_inputs.root) == before and sorted(
        p.name for p in tmp_path.iterdir()
    ) == [".run.lock"]


def test_a_waiting_claim_takes_over_a_lock_nobody_refreshes(tmp_path, capfd, monkeypatch):
    from olmo_flex_ext import outputs

    monkeypatch.setattr(outputs, "STALE_AFTER", 1.0)
    out = foreign_lock(tmp_path / "run")
    with outputs.claim_output(out, resume=True, wait=5.0):
        held = json.loads((tmp_path / ".run.lock").read_text())
    err = capfd.readouterr().err
    assert held["pid"] == os.getpid() and "waiting" in err and "took over the lock" in err


def test_lock_of_a_dead_process_is_taken_over(guarantee_inputs, tmp_path, capfd):
    i, out = guarantee_inputs, tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "command": "x",
                                "since": "then", "token": "t"}))  # fmt: skip
    code, _, err = run_inprocess(prune(i, out), capfd)
    assert code == 0, err
    assert f"note: took over the lock {lock}" in err and f"its process {dead.pid} is gone" in err
    assert (out / "config.json").is_file() and not lock.exists()


def test_lock_of_another_host_not_refreshed_is_taken_over(guarantee_inputs, tmp_path, capfd):
    from olmo_flex_ext.outputs import STALE_AFTER

    out = foreign_lock(tmp_path / "out", age=STALE_AFTER + 60)
    code, _, err = run_inprocess(prune(guarantee_inputs, out), capfd)
    assert code == 0, err
    assert "took over the lock" in err and "last refreshed" in err
    assert not (tmp_path / ".out.lock").exists()


def test_a_held_lock_is_refreshed(tmp_path, monkeypatch):
    from olmo_flex_ext import outputs

    monkeypatch.setattr(outputs, "HEARTBEAT", 0.05)
    with outputs.claim_output(tmp_path / "out"):
        lock = tmp_path / ".out.lock"
        os.utime(lock, (0, 0))
        wait_for(lambda: lock.stat().st_mtime > time.time() - 60, 10, "a refresh of the lock")
    assert not lock.exists()


def test_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    """The final rename re-checks: an output created by someone else while a command ran is
    left alone, and the new data is not moved over it."""
    from olmo_flex_ext.checkpoint import atomic_output_dir
    from olmo_flex_ext.outputs import OutputError

    out = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared while this command was running"):
        with atomic_output_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            out.mkdir()  # another writer that ignores locks
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path):
    from olmo_flex_ext.checkpoint import atomic_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            assert (out / "old.txt").read_text() == "old"
            raise RuntimeError("killed while writing")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_interrupted_overwrite_is_undone_on_the_next_run(guarantee_inputs, tmp_path, capfd):
    """Killed between moving the old output aside and moving the new one in: the next claim of
    that output puts the old one back (with a note), then the command runs as usual."""
    i, out = guarantee_inputs, tmp_path / "out"
    assert run_inprocess(prune(i, out), capfd)[0] == 0
    before = snapshot(out)
    os.replace(out, tmp_path / ".out.old-99999")
    code, _, err = run_inprocess(prune(i, out), capfd)
    assert code == 2 and f"note: restored {out}" in err
    assert_refused(code, "\n".join(error_lines(err)), ["already exists"])
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---- one line, nothing else ------------------------------------------------------------------------


def test_a_failing_command_prints_one_line_and_nothing_else(tmp_path):
    """In a fresh process (OLMo-core warns about transformer_engine when it is imported)."""
    code, out, err = run_subprocess(["info", tmp_path])
    assert (
        out == ""
        and err
        == f"error: {tmp_path} is not a checkpoint: expected config.json plus a "
        "DCP (model-only checkpoint), a trainer stepN/ directory, or a run folder that contains "
        "stepN/ directories\n"
    )
    assert code == 2
    code, _, err = run_subprocess(["--verbose", "info", tmp_path])
    assert code == 2 and "transformer_engine" in err and "Traceback" in err
    assert err.splitlines()[-1].startswith("error: ")
