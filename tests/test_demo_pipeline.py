"""The demo's stage runner and settings guard (the whole pipeline runs in test_demo_quick.py)."""

import json

import pytest

from olmo_flex_ext.demo import StageRunner, demo_config, run_demo
from olmo_flex_ext.errors import UserError


def test_stage_runner_reruns_a_stage_whose_inputs_changed(tmp_path):
    runner = StageRunner(tmp_path)
    calls = []
    assert runner.run("a", {"x": 1}, lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert runner.run("a", {"x": 1}, lambda: calls.append(2) or {"v": 2}) == {"v": 1}
    stale = tmp_path / "stale"
    stale.mkdir()
    assert runner.run("a", {"x": 2}, lambda: calls.append(3) or {"v": 3}, clean=[stale]) == {"v": 3}
    assert calls == [1, 3] and not stale.exists()
    record = json.loads((tmp_path / "stages" / "a.json").read_text())
    assert record["made_from"] == {"x": 2} and record["seconds"] >= 0 and record["cpu_seconds"] >= 0


def test_upstream_digest_follows_inputs_and_outputs_not_timings(tmp_path):
    runner = StageRunner(tmp_path)
    runner.run("a", {"x": 1}, lambda: {"v": 1})
    before = runner.upstream("a")
    runner.save("a", {"x": 1}, {"v": 1}, seconds=99.0, cpu=98.0)
    assert runner.upstream("a") == before
    runner.save("a", {"x": 1}, {"v": 2}, seconds=1.0, cpu=1.0)
    assert runner.upstream("a") != before
    with pytest.raises(RuntimeError, match="has not run"):
        runner.upstream("b")


def test_demo_refuses_a_directory_made_with_other_settings(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps({"quick": False}))
    with pytest.raises(UserError, match="other settings"):
        run_demo(str(tmp_path), quick=True)


def test_presets():
    full, quick = demo_config(), demo_config(quick=True)
    assert full.widths() == [288, 192, 72] and full.budget_width() == 192
    assert quick.widths() == [144, 96, 32] and quick.budget_width() == 96
    for c in (full, quick):  # every width a multiple that pruning allocates in
        assert all(w % c.width_multiple == 0 for w in c.widths())
