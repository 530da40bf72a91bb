"""The fixtures several test modules share, and the session's set-up (pytest reads this file
itself; plain helpers are in helpers.py, which test modules import)."""

import os
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    """Triton's interpreter runs the fused LRN's kernels on a machine without a GPU
    (tests/test_lrn_triton.py). It must be chosen before anything imports Triton: Triton reads it
    once, and under pytest-xdist another test module (torch.compile's) may import Triton before
    that test module is collected. This hook runs in each worker before any collection."""
    if not os.path.exists("/dev/nvidia0") and not os.path.exists("/dev/nvidiactl"):
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory) -> Path:
    """One uninterrupted two-tower run, the reference of every stopped-and-resumed one in test_train
    and test_faults_user (they checkpoint at other intervals: how often a run checkpoints never
    changes what it trains)."""
    from helpers import TINY, launch, ok  # here, not at the top: nothing imports torch before pytest_configure

    run = tmp_path_factory.mktemp("straight")
    ok(launch([*TINY, "checkpoint.every_steps=5", f"hydra.run.dir={run}"]))
    return run


@pytest.fixture(scope="session")
def straight_one_process(tmp_path_factory) -> Path:
    """One uninterrupted run of the whole net in one plain python process, one epoch: the
    reference of stopped-and-resumed one-process runs (and a finished run, in test_train)."""
    from helpers import TINY, launch, ok

    run = tmp_path_factory.mktemp("straight_one") / "run"
    ok(launch([*TINY, "epochs=1", f"hydra.run.dir={run}"], nproc=0))
    return run
