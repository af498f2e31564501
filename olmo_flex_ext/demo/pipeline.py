"""The demo's stages, in order (each one ``StageRunner.run`` call, each a call into the library):

``data`` -> ``public`` (train) -> ``upcycle`` (domain routers, 2-expert models) ->
``math-expert`` (train) -> ``importance`` (math and general calibration) -> ``topk-store`` ->
``distill-<variant>`` (prune + KD train, per width) -> ``eval-<row>`` -> composition
(``code-expert``, ``merge``, ``router-tuning``, ``compose-<row>``, ``routing``) -> ``report``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .config import DOMAINS
from .runner import Job, StageRunner

if TYPE_CHECKING:
    from .config import DemoConfig
    from .data.corpus import DemoData
    from .display import StageDisplay

__all__ = ["Demo", "Variant"]


@dataclass
class Variant:
    """One pruned width of the math expert: uniform, or allocated by importance at a budget."""

    name: str
    widths: List[List[int]]
    budget_width: Optional[int] = None


@dataclass
class Demo:
    """One demo directory: its config, data and stage runner."""

    out: Path
    config: DemoConfig
    pool: Any = None
    """Worker processes for stages that run side by side (:func:`.runner.worker_pool`)."""
    display: Optional[StageDisplay] = None
    """The terminal's one line per stage (none: stages print nothing there)."""
    runner: StageRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = StageRunner(self.out, self.pool, self.display, self.summary)

    def __getstate__(self) -> Dict[str, Any]:  # what a worker process gets: no pool, no display
        return {**self.__dict__, "pool": None, "display": None}

    @property
    def data(self) -> DemoData:
        from .data.corpus import DemoData

        return DemoData(self.out / "data")

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def summary(self, name: str, outputs: Dict[str, Any]) -> str:
        """A finished stage's key number, for its line on the terminal."""
        if "math_loss" in outputs:  # an evaluation
            parts = [
                f"math acc {outputs['math_accuracy']:.3f}",
                f"answer loss {outputs['math_loss']:.3f}",
            ]
            parts += [
                f"{d} loss {outputs[f'{d}_loss']:.3f}"
                for d in ("code", "general")
                if f"{d}_loss" in outputs
            ]
            return ", ".join(parts)
        metrics = self.path("runs", name, "metrics.jsonl")
        if metrics.is_file():  # a training run: its last logged training loss
            from ..train.callbacks import read_metrics

            logged = read_metrics(metrics.parent)
            for key, label in (("train/KL", "KL"), ("train/CE loss", "train loss")):
                values = [m[key] for _, m in sorted(logged.items()) if key in m]
                if values:
                    return f"final {label} {values[-1]:.3f}"
        if name == "routing":
            from .routing import routing_summary

            return routing_summary(outputs)
        if name == "data":
            return f"{sum(v['tokens'] for v in outputs.values()):,} tokens"
        return ""

    # Stages ---------------------------------------------------------------------------------

    def stage_data(self) -> Dict[str, Any]:
        from .data.corpus import DemoData

        root = self.path("data")
        if root.exists():  # built atomically, so complete; rebuilt if made with other settings
            existing = DemoData(root)
            if existing.manifest["config"] == asdict(self.config.data):
                return existing.manifest["counts"]
        return self.config.data.build(root, overwrite=True).manifest["counts"]

    def stage_public(self) -> Dict[str, Any]:
        from ..checkpoint import resolve_checkpoint
        from .runs import public_experiment, run_experiment

        experiment = public_experiment(self.config, self.data, self.path("runs", "public"))
        run_experiment(experiment)
        return {"checkpoint": str(resolve_checkpoint(experiment.trainer.save_folder))}

    def stage_upcycle(self, public: str) -> Dict[str, Any]:
        """Per domain expert, a domain router fitted on the public model (the log-odds of the
        domain's training data against the general corpus, from the router inputs), then the
        2-expert model upcycled from the public model with that router: each data owner uses
        only the public model, public data and its own data."""
        from ..compose import fit_domain_router, save_domain_router
        from ..hf.upcycling import upcycle

        c, models = self.config, self.path("models")
        out: Dict[str, Any] = {}
        for domain in DOMAINS[1:]:
            router = fit_domain_router(
                public, self.data.token_glob(f"{domain}-train"),
                self.data.token_glob("general-train"), seq_len=c.seq_len,
                num_seqs=c.router_seqs, progress=False,
            )  # fmt: skip
            rows = save_domain_router(
                models / f"router-{domain}.safetensors", router, overwrite=True
            )
            out[f"router_accuracy_{domain}"] = router.accuracy
            out[domain] = str(
                upcycle(public, models / f"upcycled-{domain}", num_experts=2,
                        router_from=rows, overwrite=True)
            )  # fmt: skip
        return out

    def stage_expert(self, name: str, upcycled: str, split: str, run) -> Dict[str, Any]:
        from ..checkpoint import resolve_checkpoint
        from .runs import expert_experiment, run_experiment

        experiment = expert_experiment(
            self.config, self.data, self.path("runs", name), upcycled=upcycled, split=split,
            run=run, name=name,
        )  # fmt: skip
        run_experiment(experiment)
        return {"checkpoint": str(resolve_checkpoint(experiment.trainer.save_folder))}

    def stage_importance(self, full: str) -> Dict[str, Any]:
        """Minitron importance of the full model's neurons with math and with general calibration,
        and per layer the share of the math expert's top-W neurons the two agree on."""
        from ..prune import checkpoint_importance, topk_overlap

        c = self.config
        out: Dict[str, Any] = {}
        scores = {}
        for domain in ("math", "general"):
            scores[domain] = checkpoint_importance(
                full, [self.data.token_glob(f"{domain}-train")], seq_len=c.seq_len,
                num_seqs=c.importance_seqs, progress=False,
            )  # fmt: skip
            out[domain] = str(scores[domain].save(self.path("importance", f"{domain}.safetensors")))
        out["overlap"] = {
            str(w): [
                topk_overlap(m[1], g[1], w)
                for m, g in zip(scores["math"].scores, scores["general"].scores)
            ]
            for w in c.widths()
        }
        return out

    def stage_store(self, full: str) -> Dict[str, Any]:
        from ..distill import TopKStore, generate_store

        c, out = self.config, self.path("topk-store")
        if out.exists():  # finished (finalised atomically) before this stage's record was written
            return {"store": str(TopKStore(out).path)}
        generate_store(
            full, self.data.token_glob("math-distill"), seq_len=c.seq_len, k=c.top_k, out=out,
            tokenizer=self.data.tokenizer(), batch_size=c.batch_seqs, progress=False,
        )  # fmt: skip
        return {"store": str(out)}

    def variants(self, scores: str) -> List[Variant]:
        """The uniform pruned widths and the importance-allocated budget variant."""
        from ..prune import ImportanceScores
        from ..prune.callback import PruneCallback

        c = self.config
        out = [Variant(str(w), [[c.public_width, w]] * c.n_layers) for w in c.widths()]
        budget = c.budget_width()
        allocate = PruneCallback(budget_width=budget, multiple=c.width_multiple)
        out.append(
            Variant(f"budget{budget}", allocate.allocation(ImportanceScores.load(scores)), budget)
        )
        return out

    def stage_distill(self, v: Variant, teacher: str, scores: str, store: str) -> Dict[str, Any]:
        from ..checkpoint import resolve_checkpoint
        from .runs import distill_experiment, run_experiment

        folder = self.path("runs", f"distill-{v.name}")
        experiment = distill_experiment(
            self.config, self.data, folder, teacher=teacher, scores=scores, store=store,
            widths=v.widths, budget_width=v.budget_width, name=f"distill-{v.name}",
        )  # fmt: skip
        run_experiment(experiment)
        return {
            "pruned": str(folder / "prune" / "start"),
            "checkpoint": str(resolve_checkpoint(folder)),
            "widths": v.widths,
        }

    def stage_eval(self, name: str, kind: str, checkpoint: str) -> Dict[str, Any]:
        from .evaluate import result_row

        return result_row(name, kind, checkpoint, self.data, self.config)

    # The pipeline ---------------------------------------------------------------------------

    def run(self) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """Run (or continue) every stage; returns the results rows and the composition rows.
        Stages in one ``run_all`` call are independent and may run side by side."""
        from .composition import Group, composition_jobs, merge_job, router_job
        from .routing import routing_job

        c, r = self.config, self.runner
        cfg = asdict(c)
        model = {
            k: cfg[k]
            for k in (
                "d_model",
                "n_layers",
                "n_heads",
                "public_width",
                "seq_len",
                "batch_seqs",
                "seed",
            )
        }

        r.run("data", {"data": cfg["data"]}, self.stage_data)
        public = r.run(
            "public", {"model": model, "run": cfg["public"], "after": r.upstream("data")},
            self.stage_public, clean=[self.path("runs", "public")],
        )["checkpoint"]  # fmt: skip
        eval_public, upcycled = r.run_all([
            self.eval_job("public", "public", public, "public"),
            Job("upcycle", {"router_seqs": c.router_seqs, "after": r.upstream("public")},
                partial(self.stage_upcycle, public)),
        ])  # fmt: skip
        experts = [("math-expert", "math", c.expert), ("code-expert", "code", c.code)]
        full, code = (
            out["checkpoint"]
            for out in r.run_all([
                Job(name, {"run": asdict(run), "after": r.upstream("upcycle")},
                    partial(self.stage_expert, name, upcycled[domain], f"{domain}-train", run),
                    [self.path("runs", name)])
                for name, domain, run in experts
            ])
        )  # fmt: skip
        after_full = r.upstream("math-expert")
        eval_full, importance, store = r.run_all([
            self.eval_job("full", "full", full, "math-expert"),
            Job("importance", {"seqs": c.importance_seqs, "widths": c.widths(), "after": after_full},
                partial(self.stage_importance, full)),
            Job("topk-store", {"k": c.top_k, "after": after_full}, partial(self.stage_store, full),
                [self.path("topk-store")]),
        ])  # fmt: skip
        variants = self.variants(importance["math"])
        after = r.upstream("importance", "topk-store")
        groups = [Group("", full, "full", "math-expert")]
        *outputs, merged = r.run_all([
            Job(f"distill-{v.name}",
                {"widths": v.widths, "budget_width": v.budget_width, "run": cfg["distill"],
                 "after": after},
                partial(self.stage_distill, v, full, importance["math"], store["store"]),
                [self.path("runs", f"distill-{v.name}")])
            for v in variants
        ] + [merge_job(self, groups[0], code)])  # fmt: skip
        distilled = {v.name: out for v, out in zip(variants, outputs)}
        half = str(c.composed_width())
        groups.append(
            Group(half, distilled[half]["checkpoint"], f"distilled-{half}", f"distill-{half}")
        )
        evals = [
            self.eval_job(f"{kind}-{v.name}", rkind, distilled[v.name][key], f"distill-{v.name}")
            for v in variants
            for kind, rkind, key in (("pruned", "pruned", "pruned"), ("distilled", "pruned+kd", "checkpoint"))
        ]  # fmt: skip
        *rows, tuned, merged_half = r.run_all(
            evals + [router_job(self, groups[0], merged["checkpoint"]), merge_job(self, groups[1], code)]
        )  # fmt: skip
        rows = [eval_public, eval_full] + rows
        first = composition_jobs(
            self, rows, groups[0], merged=merged["checkpoint"], tuned=tuned["checkpoint"],
            public=public, code=code,
        )  # fmt: skip
        *composition, tuned_half = r.run_all(
            first + [router_job(self, groups[1], merged_half["checkpoint"])]
        )
        merges = [(groups[0], merged["checkpoint"], tuned["checkpoint"]),
                  (groups[1], merged_half["checkpoint"], tuned_half["checkpoint"])]  # fmt: skip
        *second, routing = r.run_all(
            composition_jobs(self, rows, groups[1], merged=merged_half["checkpoint"],
                             tuned=tuned_half["checkpoint"])
            + [routing_job(self, merges, code=code)]
        )  # fmt: skip
        composition += second
        self.report(rows, composition, importance, distilled, routing)
        return rows, composition

    def eval_settings(self) -> Dict[str, Any]:
        return {k: getattr(self.config, k) for k in ("eval_problems", "eval_windows", "seq_len")}

    def eval_job(self, name: str, kind: str, checkpoint: str, after: str) -> Job:
        return Job(
            f"eval-{name}",
            {"eval": self.eval_settings(), "after": self.runner.upstream(after)},
            partial(self.stage_eval, name, kind, checkpoint),
        )

    def report(
        self,
        rows: List[Dict[str, Any]],
        composition: List[Dict[str, Any]],
        importance: Dict[str, Any],
        distilled: Dict[str, Dict[str, Any]],
        routing: Dict[str, Any],
    ) -> None:
        from .report import demo_report

        r = self.runner
        r.run(
            "report",
            {
                "rows": rows,
                "composition": composition,
                "overlap": importance["overlap"],
                "routing": r.upstream("routing"),
            },
            lambda: demo_report(self, rows, composition, importance, distilled, routing),
        )
