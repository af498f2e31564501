"""Writing files and directories atomically: a temp name next to the target, renamed at the end,
so an interrupted or failed write never leaves a half-written output behind. (Directories:
:class:`olmo_flex_ext.checkpoint.atomic_output_dir`, built on :func:`move_into_place`.) Right
before each rename, :func:`olmo_flex_ext.outputs.check_commit` re-checks a claimed output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

__all__ = ["atomic_file", "write_atomic", "move_into_place"]

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """A temp path in ``path``'s directory to write to; it replaces ``path`` when the block ends
    without error and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    from .outputs import check_commit, held_claim  # here: `olmo-flex --help` imports this module

    try:
        yield Path(tmp)
        if held_claim(path) is not None:
            check_commit(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: PathLike, data: Any, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: text (as UTF-8) or any bytes-like object, e.g. a
    contiguous numpy array (written without a copy). ``fsync`` also forces it to disk before the
    rename (for files a resumed job relies on)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def move_into_place(src: PathLike, out: PathLike, overwrite: Optional[bool] = None) -> None:
    """Rename the finished directory ``src`` to ``out``; an existing ``out`` is moved aside first
    and deleted only once ``src`` is in its place. An ``out`` that exists and may not be replaced
    (``overwrite`` False, or the output's claim says so) is refused, and ``src`` left as it is."""
    from .outputs import check_commit

    out = Path(out)
    check_commit(out, overwrite=overwrite)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(src, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
