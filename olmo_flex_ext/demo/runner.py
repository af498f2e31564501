"""Resumable stages: each runs once, records what it was made from and what it produced.

A finished stage writes ``DIR/stages/<name>.json`` atomically with its ``made_from`` (its settings
and digests of the records of the stages it used), its ``outputs``, and its wall and CPU time.
Running again skips a stage whose record has the same ``made_from``; a stage interrupted before
its record was written runs again (a training stage then resumes from its latest checkpoint,
because OLMo-core's trainer resumes a run folder that holds one).

Independent stages can run side by side (:meth:`StageRunner.run_all`) in worker processes, one
torch thread each; results do not depend on it, since every stage is deterministic on its own.
Everything a stage prints goes to ``DIR/logs/<name>.log``; the terminal shows one line per stage
(:class:`~olmo_flex_ext.demo.display.StageDisplay`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..atomic import write_atomic
from .display import StageDisplay, stage_log

__all__ = ["StageRunner", "StageFailed", "Job", "digest", "cpu_seconds", "worker_pool"]


class StageFailed(RuntimeError):
    """A stage raised; the display has shown the end of its log."""


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cpu_seconds(children: bool = True) -> float:
    """User + system CPU time of this process (and of its finished child processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += kids.ru_utime + kids.ru_stime
    return total


@dataclass
class Job:
    """One stage: ``fn()`` returns its outputs (a JSON-able dict). To run in a worker process,
    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of a method)."""

    name: str
    made_from: Dict[str, Any]
    fn: Callable[[], Dict[str, Any]]
    clean: List[Path] = field(default_factory=list)
    """Paths of a stale earlier attempt (a different ``made_from``) to remove before running."""


def _init_worker(parent: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)

    def watch() -> None:  # a worker whose demo process died (killed) stops too
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _timed(fn: Callable[[], Dict[str, Any]], log: Path) -> Tuple[Dict[str, Any], float, float]:
    start, cpu = time.perf_counter(), cpu_seconds(children=False)
    with stage_log(log):
        outputs = fn()
    return outputs, time.perf_counter() - start, cpu_seconds(children=False) - cpu


def worker_pool(workers: int, threads: int = 1) -> Optional[Executor]:
    """Worker processes (spawned: no state inherited from this one), or None for ``workers <= 1``."""
    if workers <= 1:
        return None
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(), threads),
    )


class StageRunner:
    """Runs named stages once: a stage whose record exists with the same ``made_from`` is
    skipped and its recorded outputs returned."""

    def __init__(
        self,
        out: Path,
        pool: Optional[Executor] = None,
        display: Optional[StageDisplay] = None,
        summary: Optional[Callable[[str, Dict[str, Any]], str]] = None,
    ):
        self.out = out
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs = out / "logs"
        self.pool = pool
        self.display = display
        self.summary = summary
        self.timings: Dict[str, float] = {}
        self.cpu_timings: Dict[str, float] = {}

    def __getstate__(self) -> Dict[str, Any]:  # workers get the runner without pool and display
        return {**self.__dict__, "pool": None, "display": None}

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _show_done(self, name: str, seconds: float, outputs: Dict[str, Any], skipped: bool) -> None:
        if self.display is not None:
            text = self.summary(name, outputs) if self.summary else ""
            self.display.done(name, seconds, text, skipped=skipped)

    def _failed(self, name: str, seconds: float, error: BaseException) -> StageFailed:
        if self.display is not None:
            self.display.failed(name, seconds, error, self.log(name))
        return StageFailed(
            f"stage {name} failed ({type(error).__name__}: {error}); log: {self.log(name)}"
        )

    def record(self, name: str) -> Optional[Dict[str, Any]]:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _skip(self, job: Job) -> Optional[Dict[str, Any]]:
        """The recorded outputs if ``job`` is done; else cleans a stale attempt, returns None."""
        old = self.record(job.name)
        if old is not None and old["made_from"] == job.made_from:
            self._show_done(job.name, old["seconds"], old["outputs"], skipped=True)
            self.timings[job.name] = old["seconds"]
            self.cpu_timings[job.name] = old.get("cpu_seconds", 0.0)
            return old["outputs"]
        if old is not None:
            for p in job.clean:
                shutil.rmtree(p, ignore_errors=True)
        return None

    def run(
        self,
        name: str,
        made_from: Dict[str, Any],
        fn: Callable[[], Dict[str, Any]],
        *,
        clean: Optional[List[Path]] = None,
    ) -> Dict[str, Any]:
        """Run ``fn`` in this process unless already done with the same inputs."""
        job = Job(name, made_from, fn, list(clean or []))
        done = self._skip(job)
        if done is not None:
            return done
        if self.display is not None:
            self.display.started(name)
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            with stage_log(self.log(name)):
                outputs = fn()
        except Exception as e:
            raise self._failed(name, time.perf_counter() - start, e) from e
        self.save(name, made_from, outputs, time.perf_counter() - start, cpu_seconds() - cpu)
        return outputs

    def run_all(self, jobs: List[Job]) -> List[Dict[str, Any]]:
        """Run independent stages, side by side in the worker pool when there is one; returns
        their outputs in order. A failing stage fails the call after the others finished."""
        results: Dict[str, Dict[str, Any]] = {}
        todo = []
        for job in jobs:
            done = self._skip(job)
            if done is None:
                todo.append(job)
            else:
                results[job.name] = done
        if self.pool is None or len(todo) <= 1:
            for job in todo:
                results[job.name] = self.run(job.name, job.made_from, job.fn)
            return [results[j.name] for j in jobs]
        futures = {self.pool.submit(_timed, job.fn, self.log(job.name)): job for job in todo}
        started = time.perf_counter()
        if self.display is not None:
            for job in todo:
                self.display.started(job.name)
        error: Optional[BaseException] = None
        for future in as_completed(futures):
            job = futures[future]
            try:
                outputs, seconds, cpu = future.result()
            except Exception as e:  # reported after the others finish
                error = error or self._failed(job.name, time.perf_counter() - started, e)
                continue
            self.save(job.name, job.made_from, outputs, seconds, cpu)
            results[job.name] = outputs
        if error is not None:
            raise error
        return [results[j.name] for j in jobs]

    def save(
        self,
        name: str,
        made_from: Dict[str, Any],
        outputs: Dict[str, Any],
        seconds: float,
        cpu: float,
    ) -> None:
        """Write a stage's record (atomically)."""
        record = {
            "stage": name,
            "made_from": made_from,
            "outputs": outputs,
            "seconds": seconds,
            "cpu_seconds": cpu,
        }
        write_atomic(self.dir / f"{name}.json", json.dumps(record, indent=2, default=str))
        self.timings[name] = seconds
        self.cpu_timings[name] = cpu
        self._show_done(name, seconds, outputs, skipped=False)

    def upstream(self, *names: str) -> Dict[str, str]:
        """Digests of finished stages (what they were made from and produced, not their
        timings), for a downstream stage's ``made_from``."""
        out = {}
        for n in names:
            rec = self.record(n)
            if rec is None:
                raise RuntimeError(f"stage {n} has not run yet")
            out[n] = digest({"made_from": rec["made_from"], "outputs": rec["outputs"]})
        return out
