"""Pruned and merged checkpoints against transformers' FlexOlmo as the oracle: exported pruned
models (uniform and per-layer widths), merged experts of equal widths against a FlexOlmo built by
hand from the inputs' weights, and merged experts of different widths exported zero-padded."""

import pytest
import torch
from compose_helpers import D_MODEL as MERGE_D_MODEL
from compose_helpers import PUBLIC, make_experts
from hf_helpers import hf_logits, load_hf, max_diff, our_logits, tokens
from prune_helpers import tiny_model, token_files

from olmo_flex_ext import load_model
from olmo_flex_ext.checkpoint import read_model_config, save_model
from olmo_flex_ext.cli import main as cli
from olmo_flex_ext.compose import merge_experts
from olmo_flex_ext.hf import export_hf
from olmo_flex_ext.models import expert_widths_per_layer

TOL = 1e-5
VOCAB = 512


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A 4-layer tiny checkpoint, its importance scores, and two pruned versions made with the
    commands: uniform widths, and widths allocated per layer by importance."""
    d = tmp_path_factory.mktemp("pruned")
    config, model = tiny_model((64, 48), n_layers=4)
    with torch.no_grad():  # layer 0's domain expert: 8 strong neurons, so it gets a narrow width
        model.blocks["0"].feed_forward_moe.experts.mlp.w1[64 + 8 :].mul_(0.01)
    ckpt = save_model(d / "ckpt", config, model.state_dict())
    token_files(d / "data")
    scores = d / "scores.safetensors"
    assert (
        cli(
            [
                "importance",
                str(ckpt),
                "--data",
                str(d / "data" / "*.npy"),
                "--seq-len",
                "32",
                "--num-seqs",
                "8",
                "--batch-size",
                "4",
                "--out",
                str(scores),
            ]
        )
        == 0
    )
    common = ["--scores", str(scores)]
    assert cli(["prune", str(ckpt), *common, "--widths", "64,16", "--out", str(d / "uniform")]) == 0
    assert (
        cli(
            [
                "prune",
                str(ckpt),
                *common,
                "--budget-width",
                "24",
                "--multiple",
                "8",
                "--min-width",
                "8",
                "--out",
                str(d / "allocated"),
            ]
        )
        == 0
    )
    return d


@pytest.mark.parametrize("name", ["uniform", "allocated"])
def test_pruned_checkpoint_exports_to_transformers_exactly(pruned, name, tmp_path):
    src = pruned / name
    widths = expert_widths_per_layer(read_model_config(src))
    if name == "uniform":
        assert widths == [[64, 16]] * 4
    else:  # importance gave the layers different widths (same total as 4 x 24)
        assert len({w[1] for w in widths}) > 1 and sum(w[1] for w in widths) == 4 * 24
    export_hf(src, tmp_path / "hf")
    hf = load_hf(tmp_path / "hf")
    assert hf.config.intermediate_size == 64  # the widest expert; narrower ones zero-padded
    x = tokens(0, vocab=VOCAB)
    assert max_diff(hf_logits(hf, x), our_logits(load_model(src), x)) < TOL


# ---- merging ------------------------------------------------------------------------------------


def _flex_olmo_from_inputs(paths, top_k: int):
    """transformers' FlexOlmo with the merged layout, its weights copied by hand from the input
    checkpoints: shared weights and the public expert from input 0, domain expert k from input k.
    Independent of our merge and our exporter."""
    from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

    inputs = [load_model(p).state_dict() for p in paths]
    base, n_layers = inputs[0], len(expert_widths_per_layer(read_model_config(paths[0])))
    config = FlexOlmoConfig(
        vocab_size=VOCAB,
        hidden_size=MERGE_D_MODEL,
        intermediate_size=PUBLIC,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=len(paths) + 1,
        num_experts_per_tok=top_k,
        norm_topk_prob=False,
        rms_norm_eps=1e-6,
        pad_token_id=1,
        eos_token_id=0,
    )
    model = FlexOlmoForCausalLM(config).eval()
    hf = dict(model.named_parameters())
    copies = {
        "model.embed_tokens.weight": base["embeddings.weight"],
        "model.norm.weight": base["lm_head.norm.weight"],
        "lm_head.weight": base["lm_head.w_out.weight"],
    }
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in [
            ("attention.w_q", "self_attn.q_proj"),
            ("attention.w_k", "self_attn.k_proj"),
            ("attention.w_v", "self_attn.v_proj"),
            ("attention.w_out", "self_attn.o_proj"),
            ("attention.q_norm", "self_attn.q_norm"),
            ("attention.k_norm", "self_attn.k_norm"),
            ("attention_norm", "post_attention_layernorm"),
            ("feed_forward_norm", "post_feedforward_layernorm"),
        ]:
            copies[f"{theirs}{b}.weight"] = base[f"{ours}{a}.weight"]
        moe = f"{ours}feed_forward_moe."
        rows = [base[moe + "router.weight"].view(2, MERGE_D_MODEL)[0]]
        experts = [{w: base[f"{moe}experts.mlp.{w}"][:PUBLIC] for w in ("w1", "w2", "w3")}]
        for state in inputs:
            rows.append(state[moe + "router.weight"].view(2, MERGE_D_MODEL)[1])
            experts.append({w: state[f"{moe}experts.mlp.{w}"][PUBLIC:] for w in ("w1", "w2", "w3")})
        copies[f"{theirs}mlp.gate.weight"] = torch.stack(rows)
        # transformers fuses gate (w1) and up (w3) per expert; down_proj is w2 transposed
        copies[f"{theirs}mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([e["w1"], e["w3"]]) for e in experts]
        )
        copies[f"{theirs}mlp.experts.down_proj"] = torch.stack([e["w2"].t() for e in experts])
    assert copies.keys() == hf.keys()
    with torch.no_grad():
        for name, value in copies.items():
            hf[name].copy_(value)
    return model


@pytest.fixture(scope="module")
def equal_experts(tmp_path_factory):
    return make_experts(tmp_path_factory.mktemp("equal"), [PUBLIC] * 3)


@pytest.mark.parametrize("top_k", [2, 4])
def test_merged_equal_widths_equal_transformers_flex_olmo(equal_experts, top_k, tmp_path):
    merged = load_model(
        merge_experts(equal_experts, tmp_path / "merged", top_k=top_k, progress=False)
    )
    reference = _flex_olmo_from_inputs(equal_experts, top_k)
    x = tokens(1, vocab=VOCAB)
    assert max_diff(our_logits(merged, x), hf_logits(reference, x)) < TOL


def test_merged_variable_widths_export_padded(tmp_path):
    experts = make_experts(tmp_path / "experts", [64, [48, 16], 32])
    merged = merge_experts(experts, tmp_path / "merged", top_k=2, progress=False)
    assert expert_widths_per_layer(read_model_config(merged)) == [
        [96, 64, 48, 32],
        [96, 64, 16, 32],
    ]
    export_hf(merged, tmp_path / "hf")
    hf = load_hf(tmp_path / "hf")
    assert hf.config.intermediate_size == PUBLIC and hf.config.num_experts == 4
    x = tokens(2, vocab=VOCAB)
    assert max_diff(hf_logits(hf, x), our_logits(load_model(merged), x)) < TOL
