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


STAGES = """
import logging, os, sys
from functools import partial
from pathlib import Path
from olmo_flex_ext.demo.display import StageDisplay
from olmo_flex_ext.demo.runner import Job, StageFailed, StageRunner

def noisy(n):
    print(f"stdout of stage {n}")
    logging.getLogger("some.library").warning("a library warning")
    os.write(2, b"straight to fd 2\\n")
    if n == 3:
        raise ValueError("stage three broke")
    return {"n": n}

display = StageDisplay()
runner = StageRunner(Path(sys.argv[1]), display=display, summary=lambda name, out: f"n={out['n']}")
with display:
    runner.run("one", {}, partial(noisy, 1))
    runner.run_all([Job("two", {}, partial(noisy, 2))])
    runner.run("one", {}, partial(noisy, 1))  # done: skipped
    try:
        runner.run("three", {}, partial(noisy, 3))
    except StageFailed as e:
        print(f"raised: {e}", file=sys.stderr)
"""


def test_one_line_per_stage_and_everything_else_in_its_log(tmp_path):
    """What a stage prints (Python, logging, file descriptors) goes to logs/<stage>.log; the
    terminal gets one line per stage; a failing stage shows the end of its log and its path."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", STAGES, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    out, err = done.stdout, done.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("✓ one") and lines[0].endswith("n=1"), out
    assert (
        lines[1].startswith("✓ two") and lines[2].startswith("· one") and "done earlier" in lines[2]
    )
    assert lines[3].startswith("✗ three") and "ValueError: stage three broke" in lines[3]
    log3 = tmp_path / "logs" / "three.log"
    assert "stage three broke" in out and f"full log: {log3}" in out
    assert "stdout of stage" not in out.replace("stdout of stage 3", "") + err.replace(
        str(log3), ""
    )
    assert "library warning" not in err and "straight to fd" not in err
    assert err.startswith("raised: stage three failed") and str(log3) in err
    for n, name in ((1, "one"), (2, "two"), (3, "three")):
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert f"stdout of stage {n}" in log and "straight to fd 2" in log
        assert "a library warning" in log


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
