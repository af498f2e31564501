"""`olmo-flex eval`: the lm-eval plan (dry run) and the Math2 computation from lm-eval's files,
run end to end against a stand-in `lm_eval` module that writes results the way lm-eval does."""

import json
import os
import textwrap

import pytest

from olmo_flex_ext.cli import main
from olmo_flex_ext.errors import UserError
from olmo_flex_ext.eval import harness


def test_dry_run_prints_commands_and_parsing(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "ckpt"), "--out", str(tmp_path / "ev"), "--dry-run",
                 "--batch-size", "16", "--limit", "50"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"olmo_flex_ext.hf.export_hf('{tmp_path / 'ckpt'}', '{tmp_path / 'ev' / 'hf'}'" in out
    gsm = next(line for line in out.splitlines() if line.startswith("gsm8k: "))
    math = next(line for line in out.splitlines() if line.startswith("minerva_math: "))
    assert "-m lm_eval --model hf" in gsm and "--tasks gsm8k --num_fewshot 5" in gsm
    assert "--tasks minerva_math --num_fewshot 4" in math
    for line in (gsm, math):
        assert "--batch_size 16" in line and "--limit 50" in line and "dtype=bfloat16" in line
    assert (
        "Math2 = mean of 100 * results['gsm8k']['exact_match,flexible-extract'] and "
        "100 * results['minerva_math']['exact_match,none']" in out
    )
    assert not (tmp_path / "ev").exists()


def test_unknown_task(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path), "--out", str(tmp_path / "o"), "--tasks", "mmlu", "--dry-run"])
    assert e.value.code == 2


FAKE_LM_EVAL = textwrap.dedent(
    """
    import argparse, json, os
    p = argparse.ArgumentParser()
    for a in ("--model", "--model_args", "--tasks", "--num_fewshot", "--batch_size", "--device",
              "--seed", "--output_path", "--limit"):
        p.add_argument(a)
    p.add_argument("--log_samples", action="store_true")
    a = p.parse_args()
    scores = {"gsm8k": {"exact_match,strict-match": 0.40, "exact_match,flexible-extract": 0.50,
                        "exact_match_stderr,flexible-extract": 0.01},
              "minerva_math": {"exact_match,none": 0.25}}
    out = os.path.join(a.output_path, "__model__hf")
    os.makedirs(out, exist_ok=True)
    data = {"results": {a.tasks: scores[a.tasks]}, "versions": {a.tasks: 3.0},
            "n-shot": {a.tasks: int(a.num_fewshot)}, "lm_eval_version": "0.4.fake",
            "config": {"model_args": a.model_args, "batch_size": a.batch_size}}
    with open(os.path.join(out, "results_2026-01-01T00-00-00.json"), "w") as f:
        json.dump(data, f)
    """
)


def test_run_computes_math2_from_lm_eval_results(tmp_path, monkeypatch):
    fake = tmp_path / "fake" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_LM_EVAL)
    monkeypatch.setenv(
        "PYTHONPATH", f"{tmp_path / 'fake'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    monkeypatch.setattr(harness, "_version", lambda dist: "0.4.fake" if dist == "lm-eval" else None)
    hf_dir = tmp_path / "hf"  # already a transformers directory: no export
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "flex_olmo"}))
    (hf_dir / "model.safetensors").write_bytes(b"")
    record = harness.run_math2(str(hf_dir), str(tmp_path / "ev"), print_fn=lambda *a: None)
    assert record["results"]["gsm8k"]["score"] == pytest.approx(50.0)
    assert record["results"]["minerva_math"]["score"] == pytest.approx(25.0)
    assert record["math2"] == pytest.approx(37.5)
    assert (
        record["results"]["gsm8k"]["num_fewshot"] == 5
        and record["results"]["minerva_math"]["num_fewshot"] == 4
    )
    assert record["results"]["gsm8k"]["stderr"] == 0.01
    assert record["results"]["gsm8k"]["task_version"] == 3.0
    assert (
        record["results"]["gsm8k"]["config"]["model_args"] == f"pretrained={hf_dir},dtype=bfloat16"
    )
    saved = json.loads((tmp_path / "ev" / "math2.json").read_text())
    assert saved["math2"] == pytest.approx(37.5) and saved["settings"]["batch_size"] == "8"


def test_results_without_the_metric_are_refused(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"results": {"gsm8k": {"acc,none": 0.1}}}))
    with pytest.raises(UserError, match="no 'gsm8k' metric 'exact_match,flexible-extract'"):
        harness.parse_results(tmp_path / "r.json", harness.TASKS["gsm8k"])
