"""Claiming an output before writing it: never an input, one writer at a time.

Every command that writes calls :func:`claim_output` before any work. A claim

- refuses an output that is, contains or lies inside one of the command's inputs (real paths,
  so symlinks and ``..`` change nothing), even with ``--overwrite``;
- refuses an existing output of the wrong kind (a directory where a file is written, or the
  reverse), an existing output without ``--overwrite``, and a folder it cannot write to;
- takes the output's lock: a file ``.NAME.lock`` beside it, created exclusively, naming the host,
  process and command. A second writer is refused with the holder's name. A lock whose process
  is gone (same host), or that nobody has refreshed for :data:`STALE_AFTER` seconds (a holder on
  another host refreshes it every :data:`HEARTBEAT` seconds), is taken over with a note;
- removes what killed earlier writers of the same output left beside it (``.NAME.tmp-*``,
  half-written ``.NAME.*.tmp`` files) and puts back an output that a killed ``--overwrite`` had
  moved aside (``.NAME.old-*``).

Writers that finish with :func:`olmo_flex_ext.atomic.move_into_place` or
:func:`~olmo_flex_ext.atomic.atomic_file` call :func:`check_commit` right before their rename, so
an output that appeared meanwhile is never replaced without ``--overwrite``.

The standard library has no cross-process lock that names its holder and survives a shared
filesystem (``fcntl`` locks are advisory, invisible to ``ls`` and unreliable over NFS), so the lock
is a plain file written here.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from .errors import UserError, note

__all__ = [
    "OutputError",
    "Claim",
    "claim_output",
    "held_claim",
    "check_not_input",
    "check_commit",
    "on_rank0",
    "lock_path",
    "HEARTBEAT",
    "STALE_AFTER",
]

PathLike = Union[str, "os.PathLike[str]"]

HEARTBEAT = 10.0
"""Seconds between refreshes of a held lock (its modification time)."""
STALE_AFTER = 60.0
"""A lock of another host not refreshed for this long belongs to a process that is gone."""


class OutputError(UserError):
    """An output that may not be written (it is an input, exists, is busy or not writable)."""


def real(path: PathLike) -> Path:
    """The real absolute path (symlinks and ``..`` resolved, also for a path not yet there)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def lock_path(out: PathLike) -> Path:
    out = real(out)
    return out.parent / f".{out.name}.lock"


def check_not_input(out: PathLike, inputs: Iterable[PathLike], what: str = "output") -> None:
    """Refuse an ``out`` that is, contains or lies inside any of ``inputs``."""
    target = real(out)
    for given in inputs:
        source = real(given)
        if target == source:
            relation = "is"
        elif source.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(source):
            relation = "is inside"
        else:
            continue
        detail = "" if str(given) == str(source) else f" ({source})"
        raise OutputError(
            f"{what} {out} {relation} the input {given}{detail}; writing it would destroy that "
            "input, so it is refused even with --overwrite; choose an output path outside the "
            "inputs"
        )


# ---- the lock ---------------------------------------------------------------------------------


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (clock ticks since boot), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


@dataclass
class _Lock:
    path: Path
    command: str
    wait: float = 0.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def record(self) -> Dict[str, object]:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "process_start": _process_start(pid),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": self.token,
        }

    def acquire(self) -> None:
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return
            holder = _read(self.path)
            if holder is None:  # removed meanwhile, or being written right now
                time.sleep(0.05)
                if _read(self.path) is None and self.path.exists() and self._age() > 5:
                    self._take_over({}, "unreadable")
                continue
            reason = self._stale_reason(holder)
            if reason is None and self._may_go_stale(holder):
                continue
            if reason is None:
                raise OutputError(
                    f"{self.path.parent / self.path.name[1:-5]} is being written by another "
                    f"process: {describe(holder)}; wait for it to finish, or if it is gone, "
                    f"delete {self.path}"
                )
            self._take_over(holder, reason)
        raise OutputError(f"could not take the lock {self.path}: other writers keep taking it")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise OutputError(
                f"cannot write to {self.path.parent} ({e.strerror}); choose an output in a folder "
                "you can write to"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(self.record(), f)
        return True

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _stale_reason(self, holder: Dict[str, object]) -> Optional[str]:
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))  # type: ignore[arg-type]
            start = holder.get("process_start")
            return None if _alive(pid, start) else f"its process {pid} is gone"  # type: ignore[arg-type]
        age = self._age()
        return f"it was last refreshed {age:.0f} s ago" if age > STALE_AFTER else None

    def _may_go_stale(self, holder: Dict[str, object]) -> bool:
        """For a claim that may wait (a relaunched training run, whose rank 0 may now be on
        another host): wait until a lock of another host is either refreshed (its holder lives)
        or old enough to be stale. True when it is worth looking again."""
        if not self.wait or holder.get("host") == socket.gethostname():
            return False
        before = self.path.stat().st_mtime if self.path.exists() else 0.0
        pause = min(self.wait, STALE_AFTER - self._age() + 1.0)
        if pause <= 0:
            return False
        note(
            f"{self.path} is held by {describe(holder)}; waiting {pause:.0f} s to see whether "
            "that process still refreshes it"
        )
        time.sleep(pause)
        self.wait = 0.0  # once: a lock refreshed meanwhile belongs to a live process
        return not self.path.exists() or self.path.stat().st_mtime == before

    def _take_over(self, holder: Dict[str, object], reason: str) -> None:
        # One taker at a time: the guard file is created exclusively, so of two processes that
        # both find the same stale lock only one replaces it; the other then sees a live lock.
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > 30:  # a taker that died mid-takeover
                    guard.unlink()
            except OSError:
                pass
            time.sleep(0.1)
            return
        try:
            os.close(fd)
            if _read(self.path) == (holder or None) or not holder:
                self.path.unlink(missing_ok=True)
                if holder:
                    note(f"took over the lock {self.path} of {describe(holder)}: {reason}")
        finally:
            guard.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name=f"lock {self.path.name}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        holder = _read(self.path)
        return holder is not None and holder.get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self.held():
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> Optional[Dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(holder: Dict[str, object]) -> str:
    return (
        f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
    )


# ---- claims -----------------------------------------------------------------------------------


@dataclass
class Claim:
    """A held output: its path, whether it may replace an existing one, and its lock."""

    out: Path
    overwrite: bool
    lock: _Lock
    created: List[Path]

    def release(self) -> None:
        self.lock.release()
        _HELD.pop(real(self.out), None)
        for d in reversed(self.created):  # folders made only to hold this output, still empty
            with contextlib.suppress(OSError):
                d.rmdir()


_HELD: Dict[Path, Claim] = {}


def held_claim(out: PathLike) -> Optional[Claim]:
    """This process's claim on ``out``, if any."""
    return _HELD.get(real(out))


def _command() -> str:
    argv = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv else ["python"]
    text = " ".join(argv)
    return text if len(text) < 200 else text[:197] + "..."


def _make_parents(folder: Path) -> List[Path]:
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise OutputError(f"cannot create {folder}: {p} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder {folder} ({e.strerror})") from None
    return list(reversed(missing))


def _clean_leftovers(out: Path) -> None:
    """Remove the temp files of killed writers of ``out`` and restore an output that a killed
    ``--overwrite`` moved aside (only called while holding the lock)."""
    parent, name = out.parent, glob.escape(out.name)
    for old in sorted(parent.glob(f".{name}.old-*")):
        if not out.exists():
            os.replace(old, out)
            note(f"restored {out}: an earlier --overwrite was interrupted before it finished")
        else:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    # ``..NAME.partial*.tmp``: a half-written file of a job's resume state (``.NAME.partial*``)
    temps = [parent.glob(p) for p in (f".{name}.tmp-*", f".{name}.*.tmp", f"..{name}.*.tmp")]
    for tmp in [t for found in temps for t in found]:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def claim_output(
    out: PathLike,
    *,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = False,
    kind: str = "dir",
    resume: bool = False,
    command: Optional[str] = None,
    wait: float = 0.0,
) -> Iterator[Claim]:
    """Hold ``out`` for writing for the duration of the block (see the module docstring).

    :param kind: ``"dir"`` or ``"file"``: what ``out`` will be.
    :param resume: an existing ``out`` is not an error (a job that continues inside it).
    :param wait: seconds to wait for a lock of another host to prove its holder alive (by
        refreshing it) before taking it over, instead of refusing at once.
    A claim this process already holds on ``out`` is reused (the outer one releases it).
    """
    out = Path(out)
    existing = held_claim(out)
    if existing is not None:
        yield existing
        return
    check_not_input(out, inputs)
    _check_existing(out, kind, overwrite or resume)
    created = _make_parents(real(out).parent)
    if not os.access(real(out).parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {real(out).parent} (permission denied); choose an output in a folder "
            "you can write to"
        )
    lock = _Lock(lock_path(out), command or _command(), wait)
    claim = Claim(out, overwrite, lock, created)
    try:
        lock.acquire()
    except BaseException:
        claim.release()
        raise
    _HELD[real(out)] = claim
    try:
        _clean_leftovers(real(out))
        _check_existing(out, kind, overwrite or resume)  # again: an output may have been restored
        yield claim
    finally:
        claim.release()


def _check_existing(out: Path, kind: str, may_exist: bool) -> None:
    if out.exists() or out.is_symlink():
        if kind == "file" and out.is_dir():
            raise OutputError(f"output {out} is a directory; give the path of a file to write")
        if kind == "dir" and not out.is_dir():
            raise OutputError(f"output {out} is a file; give the path of a directory to write")
        if not may_exist:
            raise OutputError(
                f"output {out} already exists; choose another path or pass --overwrite"
            )


def check_commit(out: PathLike, *, overwrite: Optional[bool] = None) -> None:
    """Right before ``out`` is renamed into place: refuse if this process's claim on it was lost,
    or if ``out`` appeared meanwhile and may not be replaced."""
    claim = held_claim(out)
    if claim is not None and not claim.lock.held():
        raise OutputError(
            f"lost the lock {claim.lock.path} while writing {out}: another process took it; "
            "nothing was replaced, run the command again"
        )
    allowed = overwrite if overwrite is not None else (claim.overwrite if claim else True)
    if not allowed and Path(out).exists():
        raise OutputError(
            f"output {out} appeared while this command was running (another writer?); it was "
            "left as it is: choose another path or pass --overwrite"
        )


def on_rank0(fn: Callable[[], object]) -> None:
    """Run ``fn`` (e.g. taking a claim) on rank 0 only. With a process group every rank then
    raises rank 0's :class:`UserError`, if any. Before a process group exists (the launcher claims
    before it starts one) rank 0 is the process with ``RANK=0`` and its failure ends the launch
    (torchrun then stops the other ranks)."""
    dist = sys.modules.get("torch.distributed")  # no process group unless torch is loaded
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("RANK", "0")) == 0:
            fn()
        return
    from olmo_core.distributed.utils import broadcast_object

    error: Optional[str] = None
    if dist.get_rank() == 0:
        try:
            fn()
        except UserError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise UserError(error)
