"""One way to report a user's mistake: a clear message on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
import warnings
from typing import Iterator, Optional

from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["UserError", "user_errors", "user_error_in", "note", "quiet_libraries"]


class UserError(OLMoConfigurationError):
    """Bad input: the message names the problem and the fix."""


def note(message: str) -> None:
    """Tell the user about something done on their behalf (``note: ...`` on stderr)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def user_error_in(exc: BaseException) -> Optional[str]:
    """The message to show for ``exc``, or ``None`` if it is a bug (keep its traceback).

    A configuration error counts also when it caused the exception raised (OLMo-core re-raises
    an error of its data-loading thread as ``OLMoThreadError`` from it). An ``OSError`` about a
    file (disk full, permission denied) is the user's environment, not a bug.
    """
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OLMoConfigurationError):
            return " ".join(str(e).split())
        e = e.__cause__ or e.__context__
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return None


@contextlib.contextmanager
def user_errors(verbose: bool = False) -> Iterator[None]:
    """Turn configuration errors into one ``error: <message>`` line on stderr and ``exit(2)``
    (with ``verbose``, after the traceback)."""
    try:
        yield
    except Exception as e:
        message = user_error_in(e)
        if message is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Silence library warnings and log records up to ERROR (OLMo-core's ``transformer_engine
    unavailable`` at import, torch's UserWarnings, the errors DCP logs before it raises) while
    the block runs, so that a command's output is its own and a failure is one ``error:`` line;
    ``enabled=False`` (``--verbose``) changes nothing."""
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
