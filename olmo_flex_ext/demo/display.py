"""What ``olmo-flex demo`` shows while it runs: one line per stage (name, wall time, a key number)
and a live view of the stages running now; everything a stage prints goes to its log file.

:func:`stage_log` sends a stage's output to ``logs/<stage>.log`` at the file-descriptor level, so
OLMo-core's logging, W&B and anything a library prints land there, in this process or in a worker.
:class:`StageDisplay` writes to a copy of the terminal made before any redirection.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

__all__ = ["StageDisplay", "stage_log", "log_tail"]


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr to ``path`` (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def log_tail(path: Path, lines: int = 20) -> List[str]:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    if not path.is_file():
        return []
    data = path.read_bytes()[-64_000:].decode(errors="replace")
    return data.splitlines()[-lines:]


class StageDisplay:
    """One line per finished stage and a live line of the running ones, on the terminal that was
    stdout when it was made (also while a stage's output is redirected to its log)."""

    def __init__(self, enabled: bool = True):
        terminal = os.fdopen(os.dup(1), "w", buffering=1)
        # A log file or CI gets lines of 120 columns rather than rich's default 80.
        width = None if terminal.isatty() else 120
        self.console = Console(file=terminal, highlight=False, width=width)
        self.enabled = enabled
        self.running: Dict[str, float] = {}
        self.finished = 0
        self._live: Optional[Live] = None

    def __enter__(self) -> "StageDisplay":
        if self.enabled and self.console.is_terminal:
            self._live = Live(
                get_renderable=self._view,
                console=self.console,
                refresh_per_second=4,
                redirect_stdout=False,  # a stage's output goes to its log (stage_log), not here
                redirect_stderr=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self.running.clear()
            self._live.__exit__(*exc)
            self._live = None

    def _view(self):
        if not self.running:
            return Text("")
        now = time.perf_counter()
        names = ", ".join(f"{n} {now - t:.0f} s" for n, t in self.running.items())
        return Spinner("dots", Text(f"{self.finished} stages done; running: {names}", style="cyan"))

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def print(self, *args, **kwargs) -> None:
        self.console.print(*args, **kwargs)

    def started(self, name: str) -> None:
        self.running[name] = time.perf_counter()
        self._refresh()

    def done(self, name: str, seconds: float, summary: str = "", *, skipped: bool = False) -> None:
        self.running.pop(name, None)
        self.finished += 1
        mark, note = (
            ("[dim]·[/dim]", " [dim](done earlier)[/dim]") if skipped else ("[green]✓[/green]", "")
        )
        self.console.print(f"{mark} {name:<28} {seconds:7.1f} s  {summary}{note}")
        self._refresh()

    def failed(self, name: str, seconds: float, error: BaseException, log: Path) -> None:
        self.running.pop(name, None)
        self.console.print(
            f"[red]✗ {name:<28} {seconds:7.1f} s  {type(error).__name__}: {error}[/red]"
        )
        tail = log_tail(log)
        if tail:
            self.console.print(f"  last lines of {log}:", style="dim")
            for line in tail:
                self.console.print(Text("  " + line, style="dim"))
        self.console.print(f"  full log: {log}")
        self._refresh()
