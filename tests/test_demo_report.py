"""results.json contract, its validator, the claims check and the written report."""

import copy
import json
from dataclasses import asdict

import pytest

from olmo_flex_ext.demo.report import routing_markdown, write_report
from olmo_flex_ext.demo.results import (
    ResultRow,
    check_claims,
    model_row_fields,
    validate_results,
)


def rows():
    def row(name, kind, widths, expert, acc, mloss):
        return ResultRow(name, kind, widths, 1000 + expert, expert, acc, mloss, 2.0)

    return [
        row("public", "public", [256], 0, 0.02, 3.0),
        row("full", "full", [256, 256], 600, 0.60, 0.8),
        row("pruned-50", "pruned", [256, 128], 300, 0.10, 2.0),
        row("pruned-50+kd", "pruned+kd", [256, 128], 300, 0.55, 0.9),
        row("budget-50", "pruned", [[256, 64], [256, 192]], 300, 0.05, 2.5),
        row("budget-50+kd", "pruned+kd", [[256, 64], [256, 192]], 300, 0.30, 1.2),
    ]


def test_valid_rows_round_trip(tmp_path):
    data = [asdict(r) for r in rows()]
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert validate_results(tmp_path / "results.json") == rows()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r[0].pop("math_loss"), "missing 'math_loss'"),
        (lambda r: r[0].update(extra=1), "unknown field 'extra'"),
        (lambda r: r[1].update(kind="teacher"), "kind 'teacher' is not one of"),
        (lambda r: r[1].update(math_accuracy=60.0), "fraction in \\[0, 1\\]"),
        (lambda r: r[1].update(general_loss=float("nan")), "general_loss must be a finite"),
        (
            lambda r: r[1].update(expert_widths=[256, 0]),
            "expert_widths has a width that is not positive",
        ),
        (lambda r: r[1].update(expert_widths=[[256, 1], [256]]), "different expert counts"),
        (lambda r: r[1].update(total_params=1.5), "total_params must be a non-negative integer"),
        (lambda r: r[1].update(expert_params=10**9), "expert_params must be smaller"),
        (lambda r: r[0].update(expert_params=5), "public row has no expert parameters"),
        (lambda r: r[2].update(name="full"), "name 'full' appears more than once"),
    ],
)
def test_invalid_rows_are_named(edit, message):
    data = copy.deepcopy([asdict(r) for r in rows()])
    edit(data)
    with pytest.raises(ValueError, match=message):
        validate_results(data)


def test_not_a_list():
    with pytest.raises(ValueError, match="non-empty JSON list"):
        validate_results({"rows": []})


def test_claims():
    claims = {c.text: c.holds for c in check_claims(rows(), margin=0.2)}
    assert claims == {
        "full beats public on math": True,
        "pruned-50+kd beats pruned-50 (same widths) on math": True,
        "budget-50+kd beats budget-50 (same widths) on math": True,
        "pruned-50+kd (50% of the expert) within 20% of full on math answer loss": True,  # 0.9/0.8
        "budget-50+kd (50% of the expert) within 20% of full on math answer loss": False,  # 1.2/0.8
    }
    worse = rows()
    worse[1].math_accuracy = 0.01  # lower accuracy than no expert, lower answer loss
    full_claim = lambda rs, **kw: next(  # noqa: E731
        c for c in check_claims(rs, **kw) if c.text.startswith("full beats")
    )
    assert not full_claim(worse).holds and full_claim(worse, accuracy=False).holds
    worse[3].math_loss = 2.5  # distillation made the answer loss worse than pruning alone
    assert not next(c for c in check_claims(worse) if c.text.startswith("pruned-50+kd beats")).holds


def test_write_report(tmp_path):
    curves = {"distillation": {"50%": {1: 3.0, 2: 2.5}, "19%": {1: 3.5, 2: 3.0}}}
    path = write_report(
        tmp_path, rows(), curves=curves, overlap={128: [0.9, 0.4], 64: [0.7, 0.2]},
        allocation={"uniform": [128, 128], "budget": [64, 192]}, notes=["wall time 1 s"],
        sections=[("Composition", "| a | b |\n|---|---|\n| 1 | 2 |")], margin=0.2,
    )  # fmt: skip
    assert validate_results(path) == rows()
    md = (tmp_path / "report.md").read_text()
    assert "| pruned-50+kd | pruned+kd | 256 + 128 |" in md and "wall time 1 s" in md
    assert "- [ ] budget-50+kd (50% of the expert) within 20% of full" in md
    assert "## Composition\n\n| a | b |" in md
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["calibration-overlap.png", "curves-0.png", "width-allocation.png"]
    for p in pngs:
        assert (tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{p}" in md
    assert not [p for p in tmp_path.rglob(".*")]


def test_model_row_fields():
    from olmo_flex_ext.models import olmo2_dense, tiny_flex

    dense = olmo2_dense(d_model=32, n_layers=2, n_heads=2, vocab_size=256, hidden_size=64)
    assert model_row_fields(dense) == dict(
        expert_widths=[64], total_params=dense.num_params, expert_params=0
    )
    moe = tiny_flex([[64, 32], [64, 16]], d_model=32, vocab_size=256)
    fields = model_row_fields(moe)
    assert fields["expert_widths"] == [[64, 32], [64, 16]]
    assert fields["expert_params"] == 3 * 32 * (32 + 16)
    model = moe.build(init_device="meta")
    mlp = sum(p.numel() for n, p in model.named_parameters() if "experts.mlp" in n)
    assert fields["total_params"] == sum(p.numel() for p in model.parameters())
    assert fields["expert_params"] == mlp - 3 * 32 * 64 * 2


def _composition_row(name, math_loss, code_loss, general_loss, acc=0.5):
    return dict(name=name, math_loss=math_loss, code_loss=code_loss, general_loss=general_loss,
                math_accuracy=acc)  # fmt: skip


def test_composition_targets_ratios_and_names():
    from olmo_flex_ext.demo.report import targets_markdown
    from olmo_flex_ext.demo.targets import composition_targets

    rows = [
        _composition_row("public", 2.0, 2.0, 1.0, 0.1),
        _composition_row("math expert (distilled 96)", 1.0, 3.0, 1.1, 0.5),
        _composition_row("code expert", 2.1, 1.0, 1.1, 0.1),
        _composition_row("merged (math 96)", 1.1, 1.2, 1.1, 0.44),
        _composition_row("merged (math 96) + router tuning", 1.0, 1.0, 1.2, 0.5),
        _composition_row("tuned (math 96), math opted out", 2.4, 1.0, 1.0),
        _composition_row("tuned (math 96), code opted out", 1.0, 2.2, 1.0),
    ]
    targets = composition_targets(rows, ["", "96"])  # the full group's rows are absent
    assert len(targets) == 12
    by_key = {(t.row, t.metric): t for t in targets}
    merged_code = by_key[("merged (math 96)", "code_loss")]
    assert merged_code.ratio == pytest.approx(1.2) and not merged_code.holds
    assert by_key[("merged (math 96)", "math_loss")].holds  # 1.1 <= 1.15
    tuned_general = by_key[("merged (math 96) + router tuning", "general_loss")]
    assert tuned_general.ratio == pytest.approx(1.2) and not tuned_general.holds
    math_back = by_key[("tuned (math 96), math opted out", "math_loss")]
    assert math_back.reference == "public" and math_back.ratio == pytest.approx(1.2)
    assert not math_back.holds
    assert by_key[("tuned (math 96), code opted out", "code_loss")].holds  # 1.1 <= 1.15
    accuracy = by_key[("merged (math 96)", "math_accuracy")]
    assert accuracy.ratio == pytest.approx(0.88) and not accuracy.holds
    md = targets_markdown(targets)
    assert md.startswith(f"{sum(t.holds for t in targets)} of 12 composition targets hold")
    assert "- [ ] merged (math 96): code loss 1.200x code expert's (target <= 1.15x)" in md


def routing_stats():
    from olmo_flex_ext.compose import RoutingStatistics

    return RoutingStatistics(
        domains=["general", "math"], num_experts=3, top_k=2,
        tokens={"general": 128, "math": 128},
        share={"general": [[1.0, 0.5, 0.5], [1.0, 0.25, 0.75]],
               "math": [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]},
        probability={"general": [[0.5, 0.2, 0.3], [0.6, 0.1, 0.3]],
                     "math": [[0.4, 0.0, 0.6], [0.4, 0.6, 0.0]]},
        experts=["public", "math", "code"],
    )  # fmt: skip


def test_routing_markdown_and_plot(tmp_path):
    from olmo_flex_ext.compose import RoutingStatistics

    stats = routing_stats()
    off = RoutingStatistics(**{**stats.to_json(), "opt_out": [2]})
    off.share = {d: [[1.0, 1.0, 0.0]] * 2 for d in off.domains}
    md = routing_markdown({"merged": stats, "code off": off}).splitlines()
    assert md[0].startswith("| model | domain | experts | share of tokens |")
    assert md[2] == (
        "| merged | general | public / math / code | 1.00 / 0.38 / 0.62 | "
        "1.00 / 0.50 / 0.50; 1.00 / 0.25 / 0.75 | 0.55 / 0.15 / 0.30 |"
    )
    assert md[3].startswith("| merged | math | public / math / code | 1.00 / 0.50 / 0.50 |")
    assert md[4].startswith("| code off | general | public / math / code | 1.00 / 1.00 / off |")
    assert len(md) == 6

    write_report(tmp_path, rows(), routing={"merged": stats, "code off": off})
    png = tmp_path / "plots" / "routing.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "plots/routing.png" in (tmp_path / "report.md").read_text()
