"""The progress bar of every long job (import/export, merge, importance, teacher top-k): rich,
on stderr, and silent when disabled or when stderr is not a terminal (logs stay clean)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(
    description: str,
    total: int,
    *,
    completed: int = 0,
    unit: str = "",
    enabled: bool = True,
    transient: bool = False,
) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` steps (``completed`` already done, e.g. after a resume) that yields
    ``advance(n=1)``; ``unit`` names what is counted (shown after the count)."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:  # rich would still print a blank line
        yield lambda n=1: None
        return
    columns = ["[progress.description]{task.description}", BarColumn(), MofNCompleteColumn()]
    columns += [unit] if unit else []
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n=1: bar.advance(task, n)
