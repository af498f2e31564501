"""No code from files: a checkpoint whose ``.metadata``, tensor data or trainer state would run
code when unpickled (here: create a marker file) is refused by every command and path that reads
checkpoints, with one error line, and the marker is never created. That includes the paths where
OLMo-core itself would unpickle (a training run's ``load_path`` and the run folder it resumes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from guarantees_helpers import (
    REPO,
    SEQ,
    Case,
    Marker,
    check_case,
    copy,
    forge_data_item,
    forge_metadata,
    run_inprocess,
    trainer_step,
)

FROM_CHECKPOINT = str(REPO / "train_configs" / "tiny_from_checkpoint.py")
UNSAFE = "asks to load posix.system, which no checkpoint metadata holds"


def marker(t: Path) -> Path:
    return t / "code-ran"


def evil_ck(i, t) -> Path:
    ck = copy(i.ck, t / "evil")
    forge_metadata(ck, marker(t))
    return ck


def evil_run(i, t, forge) -> Path:
    """A run folder whose latest trainer checkpoint is forged by ``forge(step_dir, marker)``."""
    step = trainer_step(i.ck, t / "run" / "step2")
    forge(step, marker(t))
    return t / "run"


def forged_trainer_state(step: Path, mark: Path) -> None:
    torch.save({"global_step": 2, "rng": Marker(mark)}, step / "train" / "rank0.pt")


def evil_trainer_item(i, t) -> Path:
    step = trainer_step(i.ck, t / "step2")
    forge_data_item(step / "model_and_optim", marker(t))
    return step


def train(i, t, *extra):
    return ["train", FROM_CHECKPOINT, *extra]


COMMANDS = [
    Case("info", lambda i, t: ["info", evil_ck(i, t)], [UNSAFE]),
    Case("info-verify", lambda i, t: ["info", evil_ck(i, t), "--verify"], [UNSAFE]),
    Case("export-hf", lambda i, t: ["export-hf", evil_ck(i, t), t / "out"], [UNSAFE]),
    Case("prune", lambda i, t: [
        "prune", evil_ck(i, t), "--scores", i.scores, "--widths", "64,16", "--out", t / "out"],
        [UNSAFE]),
    Case("importance", lambda i, t: [
        "importance", evil_ck(i, t), "--data", i.glob, "--seq-len", SEQ, "--num-seqs", 2,
        "--out", t / "s.safetensors"], [UNSAFE]),
    Case("logprobs", lambda i, t: [
        "logprobs", evil_ck(i, t), "--data", i.glob, "--seq-len", SEQ, "--tokenizer", "tiny",
        "--out", t / "store"], [UNSAFE]),
    Case("opt-out", lambda i, t: ["opt-out", evil_ck(i, t), "--experts", 1, "--out", t / "out"],
         [UNSAFE]),
    Case("merge", lambda i, t: ["merge", i.other, evil_ck(i, t), "--top-k", 2, "--out", t / "out"],
         [UNSAFE]),
    Case("domain-embed", lambda i, t: [
        "domain-embed", evil_ck(i, t), "--data", i.glob, "--seq-len", SEQ, "--num-seqs", 2,
        "--out", t / "e.safetensors"], [UNSAFE]),
    Case("domain-router", lambda i, t: [
        "domain-router", evil_ck(i, t), "--data", i.glob, "--public-data", i.glob, "--seq-len", SEQ,
        "--num-seqs", 2, "--out", t / "r.safetensors"], [UNSAFE]),
    Case("upcycle", lambda i, t: ["upcycle", evil_ck(i, t), t / "out", "--experts", 2], [UNSAFE]),
    Case("export-olmo-core", lambda i, t: [
        "export-olmo-core", evil_ck(i, t), t / "out", "--layout", "dropless", "--pad"], [UNSAFE]),
    Case("train-load-path", lambda i, t: train(
        i, t, f"--load_path={evil_ck(i, t)}", f"--trainer.save_folder={t / 'run'}"), [UNSAFE]),
    Case("train-resume-forged-metadata", lambda i, t: train(
        i, t, f"--trainer.save_folder={evil_run(i, t, lambda s, m: forge_metadata(s / 'model_and_optim', m))}"),
        [UNSAFE]),
    Case("train-resume-forged-trainer-state", lambda i, t: train(
        i, t, f"--trainer.save_folder={evil_run(i, t, forged_trainer_state)}"),
        ["rank0.pt names posix.system", "it was not loaded"]),
    Case("train-resume-forged-tensor", lambda i, t: train(
        i, t, f"--trainer.save_folder={evil_run(i, t, lambda s, m: forge_data_item(s / 'model_and_optim', m))}"),
        ["__evil.distcp (bytes 0+", "names posix.system"]),
    Case("train-load-path-forged-tensor", lambda i, t: train(
        i, t, f"--load_path={evil_trainer_item(i, t)}", f"--trainer.save_folder={t / 'run'}"),
        ["__evil.distcp (bytes 0+", "names posix.system"]),
    Case("export-hf-forged-tensor", lambda i, t: [
        "export-hf", evil_trainer_item(i, t), t / "out"],
        ["__evil.distcp (bytes 0+", "holds objects other than tensors"]),
]  # fmt: skip


@pytest.mark.parametrize("case", COMMANDS, ids=lambda c: c.name)
def test_code_in_a_checkpoint_never_runs(case, guarantee_inputs, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(guarantee_inputs.root.parent / "dataroot"))
    t = tmp_path / "case"
    check_case(case, guarantee_inputs, t, capfd, monkeypatch)
    assert not marker(t).exists()


def test_load_model_refuses_forged_metadata(guarantee_inputs, tmp_path):
    from olmo_flex_ext import load_model
    from olmo_flex_ext.safe_io import UnsafeFileError

    with pytest.raises(UnsafeFileError, match="posix.system"):
        load_model(evil_ck(guarantee_inputs, tmp_path))
    assert not marker(tmp_path).exists()


def test_restricted_reader_reads_what_torch_and_olmo_core_write(guarantee_inputs, tmp_path):
    """The allow-list is complete for real checkpoints: the project's model-only layout and
    OLMo-core's trainer layout load to the same weights."""
    from olmo_flex_ext import load_model
    from olmo_flex_ext.safe_io import check_for_olmo_core

    step = trainer_step(guarantee_inputs.ck, tmp_path / "step2")
    check_for_olmo_core(step)
    a, b = load_model(guarantee_inputs.ck).state_dict(), load_model(step).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_forged_partial_scores_are_ignored_not_run(guarantee_inputs, tmp_path, capfd):
    """importance's resume state is loaded weights-only: a forged one is ignored with a note."""
    i, out = guarantee_inputs, tmp_path / "s.safetensors"
    torch.save({"identity": Marker(marker(tmp_path)), "done": 1, "flat": torch.zeros(3)},
               tmp_path / ".s.safetensors.partial.pt")  # fmt: skip
    code, _, err = run_inprocess(["importance", i.ck, "--data", i.glob, "--seq-len", SEQ,
                                  "--num-seqs", 4, "--out", out], capfd)  # fmt: skip
    assert code == 0 and "note: ignoring the partial scores" in err
    assert out.is_file() and not marker(tmp_path).exists()
