"""One way to report a user's mistake: a clear message on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["UserError", "user_errors"]


class UserError(OLMoConfigurationError):
    """Bad input: the message names the problem and the fix."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn configuration errors into ``error: <message>`` on stderr and ``exit(2)``."""
    try:
        yield
    except OLMoConfigurationError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
