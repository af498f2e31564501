"""Merging experts trained apart, opt-out, domain-informed router rows, router-only training."""

from pathlib import Path

import numpy as np
import pytest
import torch
from compose_helpers import D_MODEL, make_experts, reference_merged_model

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import read_config, read_model_config, save_model
from olmo_flex_ext.cli import main as cli
from olmo_flex_ext.compose import load_domain_embeddings, merge_experts, set_opt_out, write_opt_out
from olmo_flex_ext.data.synthetic import bigram_tokens
from olmo_flex_ext.models import expert_widths_per_layer

REPO = Path(__file__).resolve().parents[1]
WIDTHS = [64, [48, 16], 32]  # the second expert has a different width in each layer


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Three domain experts of different widths, each trained a few steps apart from one public
    model (public expert and shared weights frozen)."""
    return make_experts(tmp_path_factory.mktemp("experts"), WIDTHS)


@pytest.fixture(scope="module")
def merged(experts, tmp_path_factory):
    root = tmp_path_factory.mktemp("merged")
    return {k: merge_experts(experts, root / f"top{k}", top_k=k, progress=False) for k in (4, 2)}


def _logits(model, seed=0):
    x = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("top_k", [4, 2])
def test_merged_logits_equal_reference_from_inputs(experts, merged, top_k):
    model = load_model(merged[top_k])
    assert expert_widths_per_layer(read_model_config(merged[top_k])) == [
        [96, 64, 48, 32],
        [96, 64, 16, 32],
    ]
    ref = reference_merged_model(experts, top_k)
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=1e-5, atol=2e-6)
    info = read_config(merged[top_k])["olmo_flex"]["merge"]
    assert info["inputs"] == [str(p) for p in experts] and info["top_k"] == top_k


@pytest.mark.parametrize("top_k", [4, 2])
def test_opt_out_equals_model_merged_without_that_expert(experts, merged, top_k, tmp_path):
    # expert 2 is the second input's domain expert
    without = load_model(
        merge_experts(
            [experts[0], experts[2]], tmp_path / "without", top_k=min(top_k, 3), progress=False
        )
    )
    expected = _logits(without)

    model = set_opt_out(load_model(merged[top_k]), [2])  # in place on a loaded model
    assert torch.equal(_logits(model), expected)

    switched = write_opt_out(merged[top_k], tmp_path / "optout", [2])  # config setting
    assert torch.equal(_logits(load_model(switched)), expected)

    drop = [
        "opt-out",
        str(merged[top_k]),
        "--experts",
        "2",
        "--out",
        str(tmp_path / "drop"),
        "--drop",
    ]
    assert cli(drop) == 0
    dropped = load_model(tmp_path / "drop")
    torch.testing.assert_close(_logits(dropped), expected, rtol=0, atol=1e-6)
    for name, t in dropped.state_dict().items():  # same weights as the merge without it
        assert torch.equal(t, without.state_dict()[name]), name


def test_merge_refuses_differing_shared_weights(experts, tmp_path, capsys):
    bad = load_model(experts[1])
    state = bad.state_dict()
    state["blocks.1.attention.w_k.weight"][3, 5] += 1e-3
    save_model(tmp_path / "bad", read_model_config(experts[1]), state)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli(["merge", str(experts[0]), str(tmp_path / "bad"), "--top-k", "2", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "blocks.1.attention.w_k.weight" in err and str(tmp_path / "bad") in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad"]

    state["blocks.1.attention.w_k.weight"][3, 5] -= 1e-3
    state["blocks.0.feed_forward_moe.experts.mlp.w2"][7, 0] += 1e-3  # a public expert row
    save_model(tmp_path / "bad", read_model_config(experts[1]), state, overwrite=True)
    with pytest.raises(SystemExit):
        cli(["merge", str(experts[0]), str(tmp_path / "bad"), "--top-k", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert "blocks.0.feed_forward_moe.experts.mlp.w2 (the public expert's rows)" in err
    assert not out.exists()


def _domain_tokens(root: Path, name: str, seed: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    bigram_tokens(4096, 512, seed=seed).astype(np.uint16).tofile(root / f"{name}.npy")
    return str(root / f"{name}.npy")


def test_router_rows_equal_domain_embeddings(experts, tmp_path):
    data = [f"d{k}={_domain_tokens(tmp_path / 'data', f'd{k}', seed=50 + k)}" for k in range(3)]
    emb_path = tmp_path / "emb.safetensors"
    args = [
        "domain-embed",
        str(experts[0]),
        "--seq-len",
        "32",
        "--num-seqs",
        "6",
        "--out",
        str(emb_path),
    ]
    for d in data:
        args += ["--data", d]
    assert cli(args) == 0
    emb = load_domain_embeddings(emb_path)
    assert emb.names == ["d0", "d1", "d2"] and emb.vectors[0].shape == (2, D_MODEL)

    # independent: the router input of layer i is the block input plus its normed attention output
    public = load_model(experts[0])
    from olmo_flex_ext.data.tokens import TokenFiles

    files = TokenFiles(data[1].split("=")[1], np.uint16)
    ids = torch.from_numpy(
        np.stack([files.read(w) for w in files.sample_windows(32, 6)]).astype(np.int64)
    )
    inputs = {}
    hooks = [
        b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i, b in enumerate(public.blocks.values())
    ]
    with torch.no_grad():
        public(ids)
        for i, block in enumerate(public.blocks.values()):
            h = inputs[i] + block.attention_norm(block.attention(inputs[i]))
            torch.testing.assert_close(
                emb.vectors[1][i], h.reshape(-1, D_MODEL).mean(0), rtol=1e-4, atol=1e-5
            )
    for h in hooks:
        h.remove()

    out = tmp_path / "merged"
    assert (
        cli(
            [
                "merge",
                *map(str, experts),
                "--top-k",
                "2",
                "--out",
                str(out),
                "--router-from",
                str(emb_path),
            ]
        )
        == 0
    )
    model = load_model(out)
    for i, block in enumerate(model.blocks.values()):
        rows = block.feed_forward_moe.router.weight.view(4, D_MODEL)
        public_row = (
            load_model(experts[0]).blocks[str(i)].feed_forward_moe.router.weight.view(2, D_MODEL)[0]
        )
        assert torch.equal(rows[0], public_row)  # one embedding per input: public row kept
        for k in range(3):
            assert torch.equal(rows[k + 1], emb.vectors[k][i])


@pytest.mark.slow
def test_router_only_training_changes_nothing_else(merged, tmp_path, monkeypatch):
    from olmo_flex_ext.train.experiment import check_parallelism, load_experiment, train
    from olmo_flex_ext.train.trainable import ROUTER_ONLY_FREEZE

    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    config = load_experiment(
        str(REPO / "train_configs/tiny_flex_router.py"),
        [
            f"--load_path={merged[2]}",
            f"--trainer.save_folder={run}",
            f"--dataset.work_dir={tmp_path / 'cache'}",
            "--trainer.max_duration.value=3",
            "--trainer.callbacks.wandb.enabled=false",
        ],
    )
    assert config.model.freeze_params == ROUTER_ONLY_FREEZE
    check_parallelism(config)
    train(config)
    before = load_model(merged[2]).state_dict()
    after = load_model(run).state_dict()
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed and all(".router." in n for n in changed), changed
    assert len(changed) == 2  # both layers' routers trained


def test_merge_keeps_expert_bias_entries(tmp_path):
    from olmo_flex_ext.models import map_moe_configs, tiny_flex
    from olmo_flex_ext.nn.router import FlexRouterConfig

    def with_bias(moe):
        moe.router = FlexRouterConfig.from_router_config(moe.router)
        moe.router.expert_bias = True
        return moe

    torch.manual_seed(0)
    public = map_moe_configs(tiny_flex([32, 16], d_model=D_MODEL), with_bias).build(
        init_device="cpu"
    )
    paths = []
    for k, w in enumerate([16, 8]):
        config = map_moe_configs(tiny_flex([32, w], d_model=D_MODEL), with_bias)
        state = {n: t.clone() for n, t in public.state_dict().items()}
        for name in [n for n in state if ".experts.mlp." in n]:
            state[name] = torch.cat([state[name][:32], torch.randn(w, D_MODEL)])
        for name in [n for n in state if n.endswith("expert_bias")]:
            state[name] = torch.tensor([-0.5 * (k + 1)])
        save_model(tmp_path / f"e{k}", config, state)
        paths.append(tmp_path / f"e{k}")
    model = load_model(merge_experts(paths, tmp_path / "m", top_k=2, progress=False))
    for block in model.blocks.values():
        assert torch.equal(block.feed_forward_moe.router.expert_bias, torch.tensor([-0.5, -1.0]))


def test_7b_router_config_trains_only_the_routers_of_the_checkpoint(tmp_path, monkeypatch):
    """``train_configs/flex_router.py`` takes a merged model's config from ``--load_path`` (here a
    small one with dolma2's vocabulary) and freezes everything but its routers."""
    from olmo_flex_ext.models import tiny_flex
    from olmo_flex_ext.train.experiment import load_experiment
    from olmo_flex_ext.train.trainable import ROUTER_ONLY_FREEZE, RouterOnlyCheck

    monkeypatch.setenv("OLMO_FLEX_DATA_ROOT", str(tmp_path / "data"))
    model_config = tiny_flex((64, 32, 16), top_k=2, vocab_size=100352)
    model = model_config.build(init_device="cpu")
    ckpt = save_model(tmp_path / "merged", model_config, model.state_dict())
    config = load_experiment(
        str(REPO / "train_configs/flex_router.py"),
        [f"--load_path={ckpt}", f"--trainer.save_folder={tmp_path / 'run'}"],
    )
    assert expert_widths_per_layer(config.model) == expert_widths_per_layer(model_config)
    assert config.model.freeze_params == ROUTER_ONLY_FREEZE
    built = config.model.build(init_device="meta")
    trainable = [n for n, p in built.named_parameters() if p.requires_grad]
    assert trainable and all(".feed_forward_moe.router." in n for n in trainable), trainable
    assert config.train_module.optim.weight_decay == 0.0
    assert isinstance(config.trainer.callbacks["router_only_check"], RouterOnlyCheck)
    assert config.dataset.paths == [f"{tmp_path / 'data'}/router-mix/*.npy"]


def test_merge_ignores_how_each_expert_was_trained(experts, tmp_path):
    """``freeze_params`` records what an expert's run froze (its router row, say); experts
    trained with and without their router row merge, and the merged model freezes nothing."""
    config = read_model_config(experts[1])
    config.freeze_params = ["blocks.*.feed_forward_moe.router.*"]
    save_model(tmp_path / "e1", config, load_model(experts[1]).state_dict())
    merged = merge_experts([experts[0], tmp_path / "e1"], tmp_path / "m", top_k=2, progress=False)
    assert read_model_config(merged).freeze_params is None
