"""The checkpoint commands through the command line: one clear error, exit 2, nothing left behind."""

import os
import subprocess
import sys

import pytest
from hf_helpers import (
    hf_flex,
    hf_olmo2,
    randomize,
)
from safetensors.torch import load_file, save_file

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import save_model
from olmo_flex_ext.cli import main
from olmo_flex_ext.models import tiny_flex


def _fails(capsys, argv, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    return err


def _only(directory, *names):
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def test_import_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(
        capsys, ["import-hf", str(tmp_path / "empty"), str(tmp_path / "out")], "has no config.json"
    )

    hf_olmo2(tmp_path / "olmo2")
    _fails(capsys, ["import-hf", str(tmp_path / "olmo2"), str(tmp_path / "out")], "not FlexOlmo")

    hf_flex(tmp_path / "sharded", max_shard_size="40KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    shard.unlink()
    _fails(capsys, ["import-hf", str(tmp_path / "sharded"), str(tmp_path / "out")], "is missing")

    hf_flex(tmp_path / "truncated")
    file = tmp_path / "truncated" / "model.safetensors"
    os.truncate(file, file.stat().st_size - 100)
    _fails(capsys, ["import-hf", str(tmp_path / "truncated"), str(tmp_path / "out")], "truncated")

    _only(tmp_path, "empty", "olmo2", "sharded", "truncated")


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    hf_flex(tmp_path / "hf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    _fails(capsys, ["import-hf", str(tmp_path / "hf"), str(tmp_path / "out")], "already exists")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    _only(tmp_path, "hf", "out")

    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "out"), "--overwrite"]) == 0
    assert not (tmp_path / "out" / "mine.txt").exists()
    load_model(tmp_path / "out")
    _only(tmp_path, "hf", "out")


def test_failure_while_writing_leaves_nothing(tmp_path, capsys):
    config = tiny_flex([24, 8], d_model=32, vocab_size=128)
    save_model(tmp_path / "ours", config, randomize(config.build(init_device="cpu")).state_dict())
    assert main(["export-hf", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    # Edit a padded neuron: the recorded widths no longer describe the weights.
    file = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(file))
    tensors["model.layers.1.mlp.experts.1.up_proj.weight"][20, 3] = 1.0
    save_file(tensors, str(file), metadata={"format": "pt"})
    _fails(capsys, ["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")], "--keep-padding")
    _only(tmp_path, "ours", "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back"), "--keep-padding"]) == 0
    assert load_model(tmp_path / "back").blocks["1"].feed_forward_moe.expert_widths == [24, 24]


def test_export_errors(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    _fails(
        capsys, ["export-hf", str(tmp_path / "nothing"), str(tmp_path / "out")], "not a checkpoint"
    )
    config = tiny_flex([24, 8], d_model=32, vocab_size=128)
    save_model(tmp_path / "ours", config, config.build(init_device="cpu").state_dict())
    argv = ["export-hf", str(tmp_path / "ours"), str(tmp_path / "out"), "--tokenizer"]
    _fails(capsys, argv + [str(tmp_path / "nothing")], "no tokenizer files")
    _only(tmp_path, "nothing", "ours")

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    assert main(argv + [str(tmp_path / "tok"), "--max-shard-size", "20KB"]) == 0
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    _fails(capsys, ["export-hf", str(tmp_path / "ours"), str(tmp_path / "out")], "already exists")


def test_info_describes_checkpoints_and_hf_dirs(tmp_path, capsys):
    config = tiny_flex([[24, 8], [16, 24]], top_k=1, d_model=32, vocab_size=128)
    save_model(tmp_path / "ours", config, config.build(init_device="cpu").state_dict())
    assert main(["info", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "layers 0: [24, 8]" in out and "layers 1: [16, 24]" in out
    assert f"({config.num_params:,d})" in out and "top-1" in out
    assert f"expert 1 {3 * 32 * (8 + 24):,d}" in out

    main(["export-hf", str(tmp_path / "ours"), str(tmp_path / "hf")])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "flex_olmo directory" in out and "layers 1: [16, 24]" in out


def test_console_script_exit_status(tmp_path):
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmo_flex_ext.cli",
            "import-hf",
            str(tmp_path / "empty"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "has no config.json" in result.stderr
    assert not (tmp_path / "out").exists()
