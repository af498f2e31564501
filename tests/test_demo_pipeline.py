"""The demo's stage runner: a tiny run end to end through the real trainer, an interrupted run
continued, and a finished run left alone. Runs in subprocesses because training prepares
process-wide state (logging, multiprocessing start method)."""

import json
import subprocess
import sys

import pytest

from olmo_flex_ext.demo import StageRunner, run_demo
from olmo_flex_ext.errors import UserError
from olmo_flex_ext.report import validate_results

SCRIPT = """
import json, sys
from pathlib import Path
import torch
from olmo_flex_ext.data.demo_data import DemoDataConfig
from olmo_flex_ext.demo import Demo, DemoConfig

config = DemoConfig(
    quick=True,
    data=DemoDataConfig(general_train_docs=40, general_math_problems=10, general_eval_docs=6,
                        math_train_problems=60,
                        math_eval_problems=8, vocab_size=384),
    d_model=32, n_layers=1, n_heads=2, public_width=64, seq_len=32, batch_seqs=4,
    public_steps=4, warmup_steps=1, save_interval=2, eval_windows=2, wandb=False,
)
if sys.argv[2] == "fail-eval":
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")
    Demo.stage_eval = boom
torch.set_num_threads(1)
demo = Demo(Path(sys.argv[1]), config)
demo.run()
print("TIMINGS " + json.dumps(demo.runner.timings))
"""


def _run(out, mode):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), mode], capture_output=True, text=True
    )


@pytest.mark.slow
def test_tiny_demo_runs_resumes_and_skips(tmp_path):
    out = tmp_path / "demo"
    first = _run(out, "fail-eval")
    assert first.returncode != 0 and "RuntimeError: interrupted" in first.stdout + first.stderr
    records = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    assert sorted(records) == ["data.json", "public.json"]
    checkpoint = json.loads((out / "stages" / "public.json").read_text())["outputs"]["checkpoint"]
    assert checkpoint.endswith("step4")

    second = _run(out, "ok")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage data: done" in second.stdout and "stage public: done" in second.stdout
    for name, mtime in records.items():  # finished stages were not redone
        assert (out / "stages" / name).stat().st_mtime_ns == mtime
    rows = validate_results(out / "results.json")
    assert [(r.name, r.kind, r.expert_widths, r.expert_params) for r in rows] == [
        ("public", "public", [64], 0)
    ]
    assert rows[0].general_loss > 0 and rows[0].math_loss > 0
    assert (out / "report.md").exists() and (out / "plots" / "curves-0.png").exists()
    metrics = (out / "runs" / "public" / "metrics.jsonl").read_text()
    assert "train/CE loss" in metrics and "eval/general/loss" in metrics

    third = _run(out, "ok")
    assert third.returncode == 0
    assert all(
        f"stage {s}: done" in third.stdout for s in ("data", "public", "eval-public", "report")
    )
    assert validate_results(out / "results.json") == rows


def test_stage_runner_reruns_a_stage_whose_inputs_changed(tmp_path):
    runner = StageRunner(tmp_path)
    calls = []
    assert runner.run("a", {"x": 1}, lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert runner.run("a", {"x": 1}, lambda: calls.append(2) or {"v": 2}) == {"v": 1}
    stale = tmp_path / "stale"
    stale.mkdir()
    assert runner.run("a", {"x": 2}, lambda: calls.append(3) or {"v": 3}, clean=[stale]) == {"v": 3}
    assert calls == [1, 3] and not stale.exists()
    assert json.loads((tmp_path / "stages" / "a.json").read_text())["made_from"] == {"x": 2}


def test_demo_refuses_a_directory_made_with_other_settings(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps({"quick": False}))
    with pytest.raises(UserError, match="other settings"):
        run_demo(str(tmp_path), quick=True)
