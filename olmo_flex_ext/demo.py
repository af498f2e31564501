"""The end-to-end demo on CPU: ``olmo-flex demo --out DIR [--quick]``.

A resumable sequence of stages, each a call into the library (the same experiment code and
OLMo-core Trainer the 7B train configs use; no separate toy path):

1. ``data``: generated English and arithmetic corpora, a BPE tokenizer, OLMo-core token files
   (:mod:`olmo_flex_ext.data.demo_data`);
2. ``public``: a tiny dense OLMo-2 public model trained on general text
   (:func:`olmo_flex_ext.recipes.flex_experiment` + :func:`olmo_flex_ext.experiment.train`);
3. ``eval-public``: math accuracy and answer loss on held-out problems, loss on held-out text;
4. ``report``: ``DIR/results.json`` and ``DIR/report.md`` (:mod:`olmo_flex_ext.report`).

Each finished stage writes ``DIR/stages/<name>.json`` (atomically) with what it was made from
(its settings and the records of the stages it used) and what it produced. Running the same
command again skips finished stages whose inputs are unchanged; an interrupted training stage
resumes from its latest checkpoint (OLMo-core's trainer does that given the same run folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from rich.console import Console

from .atomic import write_atomic

if TYPE_CHECKING:
    from .data.demo_data import DemoData, DemoDataConfig

__all__ = ["DemoConfig", "demo_config", "StageRunner", "run_demo", "register"]

console = Console()


@dataclass
class DemoConfig:
    """Sizes and step counts of a demo run (:func:`demo_config` gives the two presets)."""

    quick: bool
    data: DemoDataConfig
    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 4
    public_width: int = 384
    """MLP width of the public model (and of the math expert it is upcycled into)."""
    seq_len: int = 64
    batch_seqs: int = 32
    public_steps: int = 400
    public_lr: float = 3e-3
    warmup_steps: int = 20
    save_interval: int = 50
    eval_problems: Optional[int] = None
    """Held-out problems evaluated (None: all)."""
    eval_windows: int = 64
    """Held-out general windows of ``seq_len`` evaluated."""
    wandb: bool = True
    """Log training runs to W&B (not part of a run's identity: results do not depend on it)."""
    seed: int = 0
    margin: float = 0.1


def demo_config(quick: bool = False, *, wandb: bool = True) -> DemoConfig:
    """The full demo (about 10 minutes on 2 CPU cores once every stage exists) or the shortened
    CI variant (``quick``)."""
    from .data.demo_data import DemoDataConfig

    if quick:
        return DemoConfig(
            quick=True,
            data=DemoDataConfig(
                general_train_docs=1500, general_math_problems=2500, general_eval_docs=60,
                math_train_problems=8000, math_eval_problems=120,
            ),
            d_model=64, n_layers=2, n_heads=4, public_width=256,
            public_steps=60, save_interval=30, eval_windows=16, wandb=wandb,
        )  # fmt: skip
    return DemoConfig(quick=False, data=DemoDataConfig(), wandb=wandb)


def identity(config: DemoConfig) -> Dict[str, Any]:
    """The settings that determine a demo's results (what ``demo.json`` records)."""
    d = asdict(config)
    d.pop("wandb")
    return json.loads(json.dumps(d))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRunner:
    """Runs named stages once: a stage whose record exists with the same ``made_from`` is
    skipped and its recorded outputs returned."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings: Dict[str, float] = {}
        self.cpu_timings: Dict[str, float] = {}

    def record(self, name: str) -> Optional[Dict[str, Any]]:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run(
        self,
        name: str,
        made_from: Dict[str, Any],
        fn: Callable[[], Dict[str, Any]],
        *,
        clean: Optional[List[Path]] = None,
    ) -> Dict[str, Any]:
        """Run ``fn`` unless already done with the same inputs. ``clean``: paths of a stale
        earlier attempt (a different ``made_from``) to remove before running again."""
        old = self.record(name)
        if old is not None and old["made_from"] == made_from:
            console.print(f"[dim]stage {name}: done ({old['seconds']:.1f} s), skipped[/dim]")
            self.timings[name] = old["seconds"]
            self.cpu_timings[name] = old.get("cpu_seconds", 0.0)
            return old["outputs"]
        if old is not None:
            for p in clean or []:
                shutil.rmtree(p, ignore_errors=True)
        console.rule(f"stage {name}")
        start, cpu = time.perf_counter(), time.process_time()
        outputs = fn()
        seconds = time.perf_counter() - start
        record = {
            "stage": name,
            "made_from": made_from,
            "outputs": outputs,
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu,
        }
        write_atomic(self.dir / f"{name}.json", json.dumps(record, indent=2, default=str))
        self.timings[name] = seconds
        self.cpu_timings[name] = record["cpu_seconds"]
        console.print(f"stage {name}: {seconds:.1f} s ({record['cpu_seconds']:.1f} s CPU)")
        return outputs

    def upstream(self, *names: str) -> Dict[str, str]:
        """Digests of finished stages, for a downstream stage's ``made_from``."""
        return {n: _digest(self.record(n)) for n in names}


@dataclass
class Demo:
    """One demo directory: its config, data and stage runner."""

    out: Path
    config: DemoConfig
    runner: StageRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = StageRunner(self.out)

    @property
    def data(self) -> DemoData:
        from .data.demo_data import DemoData

        return DemoData(self.out / "data")

    # Stages ---------------------------------------------------------------------------------

    def stage_data(self) -> Dict[str, Any]:
        from .data.demo_data import DemoData

        root = self.out / "data"
        if root.exists():  # built atomically, so complete; rebuilt if made with other settings
            existing = DemoData(root).manifest["config"]
            if existing == asdict(self.config.data):
                return DemoData(root).manifest["counts"]
        return self.config.data.build(root, overwrite=True).manifest["counts"]

    def stage_public(self) -> Dict[str, Any]:
        from .checkpoint import resolve_checkpoint

        experiment = public_experiment(self.config, self.data, self.out / "runs" / "public")
        run_experiment(experiment)
        return {"checkpoint": str(resolve_checkpoint(experiment.trainer.save_folder))}

    def stage_eval(self, name: str, kind: str, checkpoint: str) -> Dict[str, Any]:
        return evaluate_row(name, kind, checkpoint, self.data, self.config)

    def stage_report(self, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        from .eval.callback import read_metrics
        from .report import ResultRow, write_report

        public_curve = read_metrics(self.out / "runs" / "public").get("train/CE loss", {})
        timings = ", ".join(
            f"{k} {v:.0f} s ({self.runner.cpu_timings[k]:.0f} s CPU)"
            for k, v in self.runner.timings.items()
        )
        path = write_report(
            self.out,
            [ResultRow(**r) for r in rows],
            title="Variable FlexOlmo demo" + (" (quick)" if self.config.quick else ""),
            curves={"public model: training loss on general text": {"public": public_curve}},
            notes=[f"stage wall times: {timings}"],
            margin=self.config.margin,
        )
        return {"results": str(path)}

    # The pipeline ---------------------------------------------------------------------------

    def run(self) -> List[Dict[str, Any]]:
        cfg = asdict(self.config)
        r = self.runner
        r.run("data", {"data": cfg["data"]}, self.stage_data)
        public = r.run(
            "public",
            {"config": _training_settings(self.config), "after": r.upstream("data")},
            self.stage_public,
            clean=[self.out / "runs" / "public"],
        )
        rows = [
            r.run(
                "eval-public",
                {"eval": _eval_settings(self.config), "after": r.upstream("public")},
                lambda: self.stage_eval("public", "public", public["checkpoint"]),
            )
        ]
        r.run(
            "report",
            {"rows": rows, "after": r.upstream("eval-public")},
            lambda: self.stage_report(rows),
        )
        return rows


def _training_settings(c: DemoConfig) -> Dict[str, Any]:
    keys = ("d_model", "n_layers", "n_heads", "public_width", "seq_len", "batch_seqs",
            "public_steps", "public_lr", "warmup_steps", "save_interval", "seed")  # fmt: skip
    return {k: getattr(c, k) for k in keys}


def _eval_settings(c: DemoConfig) -> Dict[str, Any]:
    return {"eval_problems": c.eval_problems, "eval_windows": c.eval_windows, "seq_len": c.seq_len}


def public_experiment(config: DemoConfig, data: DemoData, save_folder: Path):
    """The public model's experiment: a dense OLMo-2 trained on the general corpus, built with
    the same recipe as the 7B train configs, logging an in-loop evaluation."""
    from olmo_core.train import Duration

    from .eval.callback import FlexEvalCallback, MetricsFileCallback
    from .models import olmo2_dense
    from .recipes import flex_experiment

    tokenizer = data.tokenizer()
    model = olmo2_dense(
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        vocab_size=tokenizer.padded_vocab_size(),
        hidden_size=config.public_width,
    )
    tokens = config.seq_len * config.batch_seqs
    return flex_experiment(
        model=model,
        data_paths=[data.token_glob("general-train")],
        tokenizer=tokenizer,
        save_folder=str(save_folder),
        sequence_length=config.seq_len,
        global_batch_tokens=tokens,
        microbatch_tokens=tokens,
        max_duration=Duration.steps(config.public_steps),
        lr=config.public_lr,
        warmup_steps=config.warmup_steps,
        save_interval=config.save_interval,
        wandb_project="olmo-flex-demo" if config.wandb else None,
        wandb_name="public",
        seed=config.seed,
        extra_callbacks={
            "flex_eval": FlexEvalCallback(
                general_data=data.token_glob("general-eval"),
                seq_len=config.seq_len,
                max_windows=config.eval_windows,
                eval_interval=max(config.public_steps // 4, 1),
            ),
            "metrics_file": MetricsFileCallback(),
        },
    )


_ENVIRONMENT_READY = False


def run_experiment(experiment) -> None:
    """Train an experiment in this process exactly as ``python -m olmo_flex_ext.launch`` does
    for one rank (the training environment is prepared once per process)."""
    global _ENVIRONMENT_READY
    from olmo_core.train import prepare_training_environment

    from .experiment import check_parallelism, train

    if not _ENVIRONMENT_READY:
        prepare_training_environment(backend=None)
        _ENVIRONMENT_READY = True
    check_parallelism(experiment)
    train(experiment)


def evaluate_row(
    name: str, kind: str, checkpoint: str, data: DemoData, config: DemoConfig
) -> Dict[str, Any]:
    """One ``results.json`` row for a checkpoint: held-out math and general evaluation plus its
    parameter counts and expert widths."""
    from . import load_model
    from .checkpoint import read_model_config
    from .data.tokenize import load_tokenizer
    from .eval.arithmetic import evaluate_math
    from .eval.lm import token_file_loss
    from .report import model_row_fields

    model = load_model(checkpoint)
    tok, special = load_tokenizer(data.tokenizer_dir)
    problems = data.math_eval_problems()[: config.eval_problems]
    scores = evaluate_math(model, problems, tok, eos_id=special.eos)
    general = token_file_loss(
        model,
        data.token_glob("general-eval"),
        seq_len=config.seq_len,
        vocab_size=model.vocab_size,
        max_windows=config.eval_windows,
    )
    console.print(
        f"{name}: math accuracy {scores.accuracy:.3f} {scores.accuracy_by_level}, "
        f"answer loss {scores.answer_loss:.3f}, general loss {general:.3f}"
    )
    return dict(
        name=name,
        kind=kind,
        **model_row_fields(read_model_config(checkpoint)),
        math_accuracy=scores.accuracy,
        math_loss=scores.answer_loss,
        general_loss=general,
    )


def run_demo(
    out: str, *, quick: bool = False, wandb: bool = True, threads: int = 1
) -> List[Dict[str, Any]]:
    """Run (or continue) the demo in ``out``; returns the results rows.

    ``threads``: torch CPU threads. One is the default: the models are so small that a second
    thread mostly adds synchronisation, and on a busy machine it was measured 10x slower."""
    import torch

    torch.set_num_threads(threads)
    config = demo_config(quick, wandb=wandb)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings = root / "demo.json"
    if settings.exists():
        previous = json.loads(settings.read_text())
        if previous != identity(config):
            from .errors import UserError

            raise UserError(
                f"{root} holds a demo made with other settings (e.g. --quick vs full); "
                "use another --out directory or delete this one"
            )
    else:
        write_atomic(settings, json.dumps(identity(config), indent=2))
    start = time.perf_counter()
    rows = Demo(root, config).run()
    _print_table(rows)
    console.print(
        f"wall time {time.perf_counter() - start:.0f} s; results in {root / 'results.json'}"
    )
    return rows


def _print_table(rows: List[Dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="results")
    for col in ("name", "kind", "expert widths", "params", "expert params", "math acc",
                "math loss", "general loss"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], r["kind"], str(r["expert_widths"]), f"{r['total_params']:,}",
            f"{r['expert_params']:,}", f"{r['math_accuracy']:.3f}", f"{r['math_loss']:.3f}",
            f"{r['general_loss']:.3f}",
        )  # fmt: skip
    console.print(table)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the tiny end-to-end pipeline on CPU (resumable)",
        description="Generate data, train and evaluate tiny models, write DIR/results.json and "
        "DIR/report.md. Running it again continues where it stopped.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="the shortened variant CI runs")
    p.add_argument("--no-wandb", action="store_true", help="do not log training runs to W&B")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        from .errors import UserError

        raise UserError(f"--threads must be at least 1, got {args.threads}")
    run_demo(args.out, quick=args.quick, wandb=not args.no_wandb, threads=args.threads)
    return 0
