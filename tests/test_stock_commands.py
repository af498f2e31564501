"""Commands on stock OLMo-core MoE checkpoints: importance, prune, merge and export-hf read them
as the variable-width model; export-olmo-core writes either stock layout (bitwise the original for
a stock checkpoint read and written back, zero-padded with --pad); one clear error for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from hf_helpers import hf_logits, load_hf, max_diff, tokens
from olmo_core.distributed.checkpoint import load_model_and_optim_state
from olmo_core.nn.transformer import TransformerConfig
from prune_helpers import token_files
from stock_helpers import (
    is_expert,
    reference_logits,
    save_stock,
    stock_config,
    stock_model,
    variable_rows,
)

from olmo_flex_ext.checkpoint import (
    iter_tensors,
    load_model,
    read_config,
    read_model_config,
    save_model,
    tensor_shapes,
)
from olmo_flex_ext.cli import main
from olmo_flex_ext.models import expert_widths_per_layer
from olmo_flex_ext.nn.moe import VariableMoEConfig
from olmo_flex_ext.prune.scores import ImportanceScores

VOCAB = 512  # the synthetic token files'
HIDDEN = 48


def weights(path) -> dict:
    return dict(iter_tensors(path, list(tensor_shapes(path))))


def variable_checkpoint(stock, config: TransformerConfig, out, layout: str):
    """The stock model in the variable-width layout, converted here by OLMo-core's own weight
    views (independently of olmo_flex_ext.stock) and saved as one of our checkpoints."""
    ours = config.copy()
    moe = ours.block.feed_forward_moe
    ours.block.feed_forward_moe = VariableMoEConfig(
        num_experts=moe.num_experts,
        hidden_size=moe.hidden_size,
        router=moe.router,
        expert_widths=[moe.hidden_size] * moe.num_experts,
        lb_loss_weight=moe.lb_loss_weight,
        z_loss_weight=moe.z_loss_weight,
    )
    state = {
        k: variable_rows(k, v, layout, moe.num_experts, moe.hidden_size) if is_expert(k) else v
        for k, v in stock.state_dict().items()
    }
    return save_model(out, ours, state)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("stock")
    out = {"dir": d}
    for layout in ("default", "dropless"):
        config = stock_config(layout, vocab=VOCAB, hidden=HIDDEN)
        model = stock_model(config, seed=3)
        out[layout] = (model, config, save_stock(model, config, d / layout))
    token_files(d / "data")
    model, config, _ = out["dropless"]
    variable_checkpoint(model, config, d / "ours", "dropless")
    assert main(["opt-out", str(d / "ours"), "--experts", "1", "--out", str(d / "optout")]) == 0
    return out


def test_importance_and_prune_read_the_stock_model(setup):
    d = setup["dir"]
    model, config, stock = setup["default"]
    ours = variable_checkpoint(model, config, d / "ours-default", "default")
    common = [
        "--data",
        str(d / "data" / "*.npy"),
        "--seq-len",
        "32",
        "--num-seqs",
        "4",
        "--batch-size",
        "2",
    ]
    assert main(["importance", str(stock), *common, "--out", str(d / "stock.safetensors")]) == 0
    assert main(["importance", str(ours), *common, "--out", str(d / "ours.safetensors")]) == 0
    a, b = (
        ImportanceScores.load(d / "stock.safetensors"),
        ImportanceScores.load(d / "ours.safetensors"),
    )
    assert a.widths == [[HIDDEN, HIDDEN]] * 2 and a.fingerprint == b.fingerprint
    for x, y in zip(a.scores, b.scores):
        for s, t in zip(x, y):
            torch.testing.assert_close(s, t, rtol=1e-6, atol=0)

    scores = str(d / "stock.safetensors")
    assert (
        main(["prune", str(stock), "--scores", scores, "--widths", "48,24", "--out", str(d / "p")])
        == 0
    )
    assert (
        main(["prune", str(ours), "--scores", scores, "--widths", "48,24", "--out", str(d / "q")])
        == 0
    )
    assert expert_widths_per_layer(read_model_config(d / "p")) == [[48, 24]] * 2
    q = weights(d / "q")
    for name, t in weights(d / "p").items():
        assert torch.equal(t, q[name]), name


def test_export_hf_of_a_stock_checkpoint_matches_the_stock_model(setup):
    d = setup["dir"]
    for layout in ("default", "dropless"):
        model, _, stock = setup[layout]
        assert main(["export-hf", str(stock), str(d / f"hf-{layout}")]) == 0
        x = tokens(vocab=VOCAB)
        assert (
            max_diff(hf_logits(load_hf(d / f"hf-{layout}"), x), reference_logits(model, x)) < 1e-5
        )


def test_merge_reads_both_layouts_alike(setup):
    """A default-layout and a dropless checkpoint with the same public expert merge: their shared
    weights agree only once both are converted."""
    d = setup["dir"]
    model, _, stock = setup["default"]
    config = stock_config("dropless", vocab=VOCAB, hidden=HIDDEN)
    other = stock_model(config, seed=3)
    with torch.no_grad():  # the same public expert, another domain expert and router row
        for name, p in other.named_parameters():
            src = model.state_dict()[name]
            if is_expert(name):
                rows = variable_rows(name, src, "default", 2, HIDDEN)
                rows[HIDDEN:] = torch.randn(HIDDEN, rows.shape[1]) * 0.1
                p.copy_(rows)  # dropless stores the variable-width rows
            elif name.endswith("router.weight"):
                p.copy_(torch.cat([src[: src.numel() // 2], torch.randn(src.numel() // 2)]))
            else:
                p.copy_(src)
    save_stock(other, config, d / "other")
    assert (
        main(["merge", str(stock), str(d / "other"), "--top-k", "3", "--out", str(d / "merged")])
        == 0
    )
    merged = weights(d / "merged")
    w1 = merged["blocks.0.feed_forward_moe.experts.mlp.w1"]
    assert w1.shape == (3 * HIDDEN, 32)
    name = "blocks.0.feed_forward_moe.experts.mlp.w1"
    assert torch.equal(
        w1[: 2 * HIDDEN], variable_rows(name, model.state_dict()[name], "default", 2, HIDDEN)
    )
    assert torch.equal(w1[2 * HIDDEN :], other.state_dict()[name][HIDDEN:])


@pytest.mark.parametrize("layout", ["default", "dropless"])
def test_stock_checkpoint_written_back_is_bitwise_the_original(setup, layout):
    d = setup["dir"]
    model, _, stock = setup[layout]
    out = d / f"back-{layout}"
    assert main(["export-olmo-core", str(stock), str(out), "--layout", layout]) == 0
    original = json.loads((stock / "config.json").read_text())["model"]
    assert read_config(out)["model"] == original
    restored = TransformerConfig.from_dict(original).build(init_device="cpu")
    load_model_and_optim_state(str(out), restored)  # OLMo-core loads it into its own model
    for name, t in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], t), name

    other = "dropless" if layout == "default" else "default"
    assert main(["export-olmo-core", str(stock), str(d / f"as-{other}"), "--layout", other]) == 0
    config = TransformerConfig.from_dict(read_config(d / f"as-{other}")["model"])
    assert config.block.feed_forward_moe.name == other
    converted = config.build(init_device="cpu").eval()
    load_model_and_optim_state(str(d / f"as-{other}"), converted)
    x = tokens(vocab=VOCAB)
    assert max_diff(reference_logits(converted, x), reference_logits(model, x)) < 1e-5


def test_narrower_experts_are_padded_or_refused(setup, capsys):
    d = setup["dir"]
    _, _, stock = setup["default"]
    pruned = d / "pruned"
    assert (
        main(
            [
                "importance",
                str(stock),
                "--data",
                str(d / "data" / "*.npy"),
                "--seq-len",
                "32",
                "--num-seqs",
                "2",
                "--out",
                str(d / "s.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                str(stock),
                "--scores",
                str(d / "s.safetensors"),
                "--widths",
                "48,20",
                "--out",
                str(pruned),
            ]
        )
        == 0
    )

    with pytest.raises(SystemExit) as e:
        main(["export-olmo-core", str(pruned), str(d / "unpadded"), "--layout", "default"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "--pad" in err and "\n" not in err
    assert not (d / "unpadded").exists()

    for layout in ("default", "dropless"):
        padded = d / f"padded-{layout}"
        assert (
            main(["export-olmo-core", str(pruned), str(padded), "--layout", layout, "--pad"]) == 0
        )
        saved = read_config(padded)
        assert saved["olmo_flex"]["stock_expert_widths"] == [[48, 20]] * 2
        config = TransformerConfig.from_dict(saved["model"])
        assert config.block.feed_forward_moe.hidden_size == 48
        stock_padded = config.build(init_device="cpu").eval()
        load_model_and_optim_state(str(padded), stock_padded)  # OLMo-core loads it
        x = tokens(vocab=VOCAB)
        with torch.no_grad():
            ours = load_model(pruned)(x)
        assert (
            max_diff(reference_logits(stock_padded, x), ours) < 1e-5
        )  # zero padding: same function

        assert expert_widths_per_layer(read_model_config(padded)) == [[48, 20]] * 2  # restored
        back = weights(padded)
        for name, t in weights(pruned).items():
            assert torch.equal(back[name], t), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["export-olmo-core", "{stock}", "{stock}/inside", "--layout", "default"], "the input"),
        (
            ["export-olmo-core", "{stock}", "{stock}", "--layout", "default", "--overwrite"],
            "the input",
        ),
        (
            ["import-olmo-core", "{d}/ours", "{d}/imported"],
            "is not a stock OLMo-core MoE checkpoint",
        ),
        (["export-olmo-core", "{d}/optout", "{d}/x", "--layout", "default"], "(opt_out)"),
        (["import-olmo-core", "{d}/missing", "{d}/imported"], "does not exist"),
        (["export-olmo-core", "{stock}", "{d}/data", "--layout", "dropless"], "already exists"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(setup, capsys, args, message):
    d = setup["dir"]
    stock = setup["dropless"][2]
    before = sorted(p.name for p in d.iterdir())
    argv = [a.format(stock=stock, d=d) for a in args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err, (
        err
    )
    assert sorted(p.name for p in d.iterdir()) == before
    assert not (stock / "inside").exists()
