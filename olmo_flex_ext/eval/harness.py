"""Math2 at 7B scale: export a checkpoint to transformers and run EleutherAI's lm-eval harness.

Math2 is the mean of GSM8K (5-shot) and minerva_math (4-shot) accuracy, in percent, as in the
Variable FlexOlmo write-up. Harness numbers move with the metric/filter chosen, the few-shot count,
batch size (padding), dtype, model arguments, seeds, the harness and task versions and ``--limit``;
all of these are written to ``OUT/math2.json`` next to the score, with the exact commands run.

Needs the ``eval`` extra (``pip install 'olmo-flex-ext[eval]'``), a GPU for reasonable speed and the
Hugging Face hub for the task data. ``--dry-run`` prints what would run and how the result files are
parsed, and needs neither.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..atomic import write_atomic
from ..errors import UserError

__all__ = [
    "HarnessTask",
    "HarnessSettings",
    "TASKS",
    "lm_eval_command",
    "parse_results",
    "run_math2",
]


@dataclass(frozen=True)
class HarnessTask:
    """An lm-eval task and how its score is read: ``results[name][metric]``."""

    name: str
    num_fewshot: int
    metric: str


TASKS: Dict[str, HarnessTask] = {
    "gsm8k": HarnessTask("gsm8k", 5, "exact_match,flexible-extract"),
    "minerva_math": HarnessTask("minerva_math", 4, "exact_match,none"),
}
"""The Math2 tasks with their few-shot counts and the metric taken from lm-eval's results."""


@dataclass
class HarnessSettings:
    """Everything besides the model that changes the number."""

    batch_size: str = "8"
    dtype: str = "bfloat16"
    device: str = "cuda"
    limit: Optional[float] = None
    seed: str = "0,1234,1234,1234"
    """lm-eval's ``--seed`` (python, numpy, torch, fewshot sampler)."""
    extra_model_args: Dict[str, str] = field(default_factory=dict)

    def model_args(self, hf_dir: Path) -> str:
        args = {"pretrained": str(hf_dir), "dtype": self.dtype, **self.extra_model_args}
        return ",".join(f"{k}={v}" for k, v in args.items())


def lm_eval_command(
    task: HarnessTask, hf_dir: Path, out: Path, settings: HarnessSettings
) -> List[str]:
    """The lm-eval command line for one task (results go under ``out``)."""
    cmd = [
        sys.executable, "-m", "lm_eval",
        "--model", "hf",
        "--model_args", settings.model_args(hf_dir),
        "--tasks", task.name,
        "--num_fewshot", str(task.num_fewshot),
        "--batch_size", settings.batch_size,
        "--device", settings.device,
        "--seed", settings.seed,
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip
    if settings.limit is not None:
        cmd += ["--limit", str(settings.limit)]
    return cmd


def find_results_file(out: Path) -> Path:
    """The newest ``results_*.json`` lm-eval wrote under ``out`` (it adds a model-name folder)."""
    files = sorted(
        glob.glob(str(out / "**" / "results_*.json"), recursive=True), key=os.path.getmtime
    )
    if not files:
        raise UserError(f"lm-eval wrote no results_*.json under {out}; see its output above")
    return Path(files[-1])


def parse_results(path: Path, task: HarnessTask) -> Dict[str, Any]:
    """Score (percent) and the recorded settings of ``task`` from an lm-eval results file."""
    data = json.loads(Path(path).read_text())
    results = data.get("results", {}).get(task.name)
    if results is None or task.metric not in results:
        found = sorted(results) if results else sorted(data.get("results", {}))
        raise UserError(f"{path} has no {task.name!r} metric {task.metric!r} (found {found})")
    return {
        "score": 100.0 * float(results[task.metric]),
        "metric": task.metric,
        "stderr": results.get(task.metric.replace(",", "_stderr,", 1)),
        "num_fewshot": data.get("n-shot", {}).get(task.name, task.num_fewshot),
        "task_version": data.get("versions", {}).get(task.name),
        "lm_eval_version": data.get("lm_eval_version"),
        "transformers_version": data.get("transformers_version"),
        "config": data.get("config"),
        "results_file": str(path),
    }


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_hf_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file() or not list(path.glob("*.safetensors")):
        return False
    return "model_type" in json.loads(config.read_text())


def run_math2(
    ckpt: str,
    out: str,
    *,
    tasks: Sequence[str] = ("gsm8k", "minerva_math"),
    tokenizer: Optional[str] = None,
    settings: Optional[HarnessSettings] = None,
    dry_run: bool = False,
    print_fn: Any = print,
) -> Dict[str, Any]:
    """Export ``ckpt`` (unless it already is a transformers directory), run lm-eval for each task,
    write ``out/math2.json`` and return it. With ``dry_run`` only print the plan."""
    settings = settings or HarnessSettings()
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    out_dir, src = Path(out), Path(ckpt)
    hf_dir = src if _is_hf_dir(src) else out_dir / "hf"
    plan: List[Tuple[HarnessTask, List[str], Path]] = [
        (
            TASKS[t],
            lm_eval_command(TASKS[t], hf_dir, out_dir / "lm_eval" / t, settings),
            out_dir / "lm_eval" / t,
        )
        for t in tasks
    ]
    record: Dict[str, Any] = {
        "checkpoint": str(src.resolve()) if src.exists() else str(src),
        "hf_dir": str(hf_dir),
        "settings": asdict(settings),
        "tasks": {t.name: asdict(t) for t, _, _ in plan},
        "commands": {t.name: shlex.join(cmd) for t, cmd, _ in plan},
        "versions": {d: _version(d) for d in ("lm-eval", "transformers", "torch", "olmo-flex-ext")},
        "math2_rule": "mean of "
        + " and ".join(f"100 * results[{t.name!r}][{t.metric!r}]" for t, _, _ in plan),
    }
    if dry_run:
        if hf_dir != src:
            print_fn(
                f"export: olmo_flex_ext.hf.export_hf({str(src)!r}, {str(hf_dir)!r}, tokenizer={tokenizer!r})"
            )
        for t, cmd, _ in plan:
            print_fn(f"{t.name}: {shlex.join(cmd)}")
            print_fn(
                f"  parse: newest results_*.json under {out_dir / 'lm_eval' / t.name}, "
                f"score = 100 * results[{t.name!r}][{t.metric!r}]"
            )
        print_fn(f"Math2 = {record['math2_rule']}")
        print_fn(json.dumps(record, indent=2))
        return record
    if _version("lm-eval") is None:
        raise UserError("lm-eval is not installed; pip install 'olmo-flex-ext[eval]'")
    if hf_dir != src:
        from ..hf import export_hf  # type: ignore[import-not-found]

        export_hf(str(src), str(hf_dir), tokenizer=tokenizer, overwrite=True)
    scores = {}
    for t, cmd, task_out in plan:
        print_fn(f"running: {shlex.join(cmd)}")
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"lm-eval failed on {t.name}; see its output above")
        scores[t.name] = parse_results(find_results_file(task_out), t)
    record["results"] = scores
    record["math2"] = sum(s["score"] for s in scores.values()) / len(scores)
    write_atomic(out_dir / "math2.json", json.dumps(record, indent=2))
    return record
