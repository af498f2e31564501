"""The commands: importance -> compare-scores / allocate -> prune, and one clear error (exit 2,
nothing written) for each kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch
from prune_helpers import tiny_checkpoint, token_files

from olmo_flex_ext.checkpoint import load_model, read_config
from olmo_flex_ext.cli import main
from olmo_flex_ext.models import expert_widths_per_layer
from olmo_flex_ext.prune.scores import ImportanceScores


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ckpt = tiny_checkpoint(d / "ckpt", (64, 48))
    other = tiny_checkpoint(d / "other", (64, 48), seed=9)
    narrow = tiny_checkpoint(d / "narrow", (64, 32))
    data = token_files(d / "data")
    data2 = token_files(d / "data2", seed=1)
    common = ["--seq-len", "32", "--num-seqs", "6", "--batch-size", "2"]
    glob = str(d / "data" / "*.npy")
    assert (
        main(["importance", str(ckpt), "--data", glob, *common, "--out", str(d / "s.safetensors")])
        == 0
    )
    assert (
        main(
            [
                "importance",
                str(ckpt),
                "--data",
                str(d / "data2" / "*.npy"),
                *common,
                "--out",
                str(d / "s2.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "importance",
                str(other),
                "--data",
                glob,
                *common,
                "--out",
                str(d / "other.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "importance",
                str(narrow),
                "--data",
                glob,
                *common,
                "--out",
                str(d / "narrow.safetensors"),
            ]
        )
        == 0
    )
    del data, data2
    return d


def test_importance_writes_scores_with_metadata(setup):
    s = ImportanceScores.load(setup / "s.safetensors")
    assert s.widths == [[64, 48], [64, 48]]
    cal = json.loads(s.metadata["calibration"])
    assert cal["dtype"] == "uint16" and cal["seq_len"] == 32 and cal["num_seqs"] == 6
    assert s.metadata["tokens"] == "192" and s.metadata["method"] == "minitron"


def test_prune_with_widths_and_with_budget(setup, capsys):
    d = setup
    assert (
        main(
            [
                "prune",
                str(d / "ckpt"),
                "--scores",
                str(d / "s.safetensors"),
                "--widths",
                "64,16",
                "--out",
                str(d / "p16"),
            ]
        )
        == 0
    )
    model = load_model(d / "p16")
    assert [b.feed_forward_moe.experts.mlp.expert_widths for b in model.blocks.values()] == [
        [64, 16]
    ] * 2
    info = read_config(d / "p16")["olmo_flex"]
    assert info["pruned_from"] == str(d / "ckpt") and info["expert_widths"] == [[64, 16]] * 2

    assert (
        main(
            [
                "allocate",
                str(d / "s.safetensors"),
                "--budget-width",
                "24",
                "--multiple",
                "8",
                "--min-width",
                "8",
                "--out",
                str(d / "w.json"),
            ]
        )
        == 0
    )
    widths = json.loads((d / "w.json").read_text())["expert_widths"]
    assert sum(w[1] for w in widths) == 48 and all(w[0] == 64 for w in widths)
    assert (
        main(
            [
                "prune",
                str(d / "ckpt"),
                "--scores",
                str(d / "s.safetensors"),
                "--budget-width",
                "24",
                "--multiple",
                "8",
                "--min-width",
                "8",
                "--out",
                str(d / "pb"),
            ]
        )
        == 0
    )
    from olmo_flex_ext.checkpoint import read_model_config

    assert expert_widths_per_layer(read_model_config(d / "pb")) == widths
    # a parameter budget: 3 * d_model (32) params per neuron -> 48 neurons
    assert (
        main(
            [
                "prune",
                str(d / "ckpt"),
                "--scores",
                str(d / "s.safetensors"),
                "--budget",
                "4608",
                "--multiple",
                "8",
                "--min-width",
                "8",
                "--out",
                str(d / "pp"),
            ]
        )
        == 0
    )
    assert expert_widths_per_layer(read_model_config(d / "pp")) == widths
    capsys.readouterr()


def test_compare_scores_table_and_plot(setup, capsys):
    d = setup
    assert (
        main(
            [
                "compare-scores",
                str(d / "s.safetensors"),
                str(d / "s2.safetensors"),
                "--width",
                "16",
                "--plot",
                str(d / "cmp.png"),
                "--json",
                str(d / "cmp.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "top-16" in out and "layer" in out
    assert (d / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((d / "cmp.json").read_text())["differ"]
    a, b = ImportanceScores.load(d / "s.safetensors"), ImportanceScores.load(d / "s2.safetensors")
    for r in rows:
        i = r["layer"]
        top_a = set(torch.topk(a.scores[i][1], 16).indices.tolist())
        top_b = set(torch.topk(b.scores[i][1], 16).indices.tolist())
        assert r["expert1"] == pytest.approx(1 - len(top_a & top_b) / 16)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--widths", "64,64"], "larger than its original width 48"),
        (["--widths", "64,0"], "not a positive number"),
        (["--widths", "64,-8"], "not a positive number"),
        (["--widths", "64"], "1 widths [64] for 2 experts"),
        (["--widths", "64,16,8"], "3 widths"),
        (["--widths", "32,16"], "public expert"),
        (["--scores", "other.safetensors", "--widths", "64,16"], "computed on another model"),
        (["--scores", "narrow.safetensors", "--widths", "64,16"], "expert widths [64, 32]"),
        (["--budget-width", "4", "--multiple", "8"], "below"),
        (["--budget", "100"], "below"),
        (["--widths", "64,16", "--budget-width", "8"], "exactly one of"),
    ],
)
def test_prune_errors_are_clear_and_write_nothing(setup, capsys, args, message):
    d = setup
    if "--scores" not in args:
        args = ["--scores", "s.safetensors", *args]
    args = [str(d / a) if a.endswith(".safetensors") else a for a in args]
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(SystemExit) as exc:
        main(["prune", str(d / "ckpt"), *args, "--out", str(d / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1  # one line, no traceback
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written, no temp dirs left


def test_importance_errors(setup, capsys):
    d = setup
    for args, message in [
        (["--out", str(d / "s.safetensors")], "already exists"),
        (["--out", str(d / "x.safetensors"), "--dtype", "uint32"], "vocabulary"),
        (["--out", str(d / "x.safetensors"), "--method", "magic"], "unknown method"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "importance",
                    str(d / "ckpt"),
                    "--data",
                    str(d / "data" / "*.npy"),
                    "--seq-len",
                    "32",
                    "--num-seqs",
                    "2",
                    *args,
                ]
            )
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (d / "x.safetensors").exists()
