"""A rich progress bar that is silent when disabled (rich still prints a newline then)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class _Silent:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool = True, **kwargs: Any) -> Iterator[Any]:
    """``rich.progress.Progress(**kwargs)`` if ``enabled``, else an object that ignores calls."""
    if not enabled:
        yield _Silent()
        return
    from rich.progress import Progress

    with Progress(**kwargs) as bar:
        yield bar
