"""Shared test settings: quiet, offline, deterministic, CPU only.

Tests run tiny models, for which one thread is fastest (two are much slower on a busy 2-core
machine): torch in this process uses one intra-op thread, and subprocesses (torchrun, the CLI)
inherit OMP_NUM_THREADS=1. A test that needs more threads sets them itself.
"""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads when it starts)

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def guarantee_inputs(tmp_path_factory):
    """Valid inputs of every kind for the guarantee tests (tests/guarantees_helpers.py)."""
    from guarantees_helpers import build_inputs

    return build_inputs(tmp_path_factory.mktemp("inputs"))
