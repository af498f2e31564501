"""What :func:`~olmo_flex_ext.train.experiment.train` checks before it builds anything: that no
live run writes the same run folder, and that every checkpoint OLMo-core will open is safe.

- One run per folder: rank 0 takes the lock of ``trainer.save_folder``
  (:func:`olmo_flex_ext.outputs.claim_output`, ``.NAME.lock`` beside the folder, refreshed while
  the run lives) and every rank stops with the same error if another run holds it. A lock left by
  a crashed or killed run is taken over with a note, so resuming always works: at once on the
  same host (its process is gone), after at most a minute when the relaunch's rank 0 is on
  another host (the lock is no longer refreshed). torchrun's workers outlive a kill of torchrun
  itself and keep the lock until they are gone.
- No code from checkpoints: OLMo-core's trainer unpickles the checkpoint it resumes from (and a
  fresh run's ``load_path``) without restrictions, so those are checked first with
  :func:`olmo_flex_ext.safe_io.check_for_olmo_core`.

Remote (URL) run folders are neither locked nor checked: there is no atomic exclusive create on
object stores.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, List, Optional

from olmo_core.io import is_url
from olmo_core.train.checkpoint import Checkpointer

from .. import outputs
from ..outputs import on_rank0

__all__ = [
    "claim_run_folder",
    "checkpoints_to_open",
    "check_start_checkpoints",
    "guard_run",
]


@contextlib.contextmanager
def claim_run_folder(save_folder: str, command: Optional[str] = None) -> Iterator[None]:
    """Hold the lock of a run folder for the block (rank 0; a no-op for URLs)."""
    if is_url(str(save_folder)):
        yield
        return
    with contextlib.ExitStack() as stack:
        # A relaunch whose rank 0 is on another host than the crashed run's waits for that
        # run's lock to go stale rather than refusing: resuming needs no manual step.
        on_rank0(lambda: stack.enter_context(outputs.claim_output(
            save_folder, kind="dir", resume=True, command=command,
            wait=outputs.STALE_AFTER + outputs.HEARTBEAT,
        )))  # fmt: skip
        yield


def checkpoints_to_open(
    save_folder: str, load_path: Optional[str], trainer_load_path: Optional[str]
) -> List[Path]:
    """The local checkpoints OLMo-core will open: the run folder's latest (a resume), else the
    initial weights (``load_path``, and the trainer's own ``load_path``)."""
    if not is_url(str(save_folder)) and Checkpointer.contains_checkpoint(save_folder):
        return [Path(Checkpointer.latest_checkpoint(save_folder))]
    out = []
    for path in (load_path, trainer_load_path):
        if path and not is_url(str(path)):
            from ..checkpoint import resolve_checkpoint

            out.append(resolve_checkpoint(path))
    return out


def check_start_checkpoints(
    save_folder: str, load_path: Optional[str], trainer_load_path: Optional[str] = None
) -> None:
    """Check (on rank 0) every checkpoint :func:`checkpoints_to_open` names."""
    from ..safe_io import check_for_olmo_core

    def check() -> None:
        for ckpt in checkpoints_to_open(save_folder, load_path, trainer_load_path):
            check_for_olmo_core(ckpt)

    on_rank0(check)


@contextlib.contextmanager
def guard_run(config) -> Iterator[None]:
    """:func:`claim_run_folder` and :func:`check_start_checkpoints` for an experiment config
    (the checks are remembered, so calling this again inside costs nothing)."""
    folder = str(config.trainer.save_folder)
    with claim_run_folder(folder):
        check_start_checkpoints(
            folder, config.load_path, getattr(config.trainer, "load_path", None)
        )
        yield
