"""launch/train.py under the device check's watch: each training step runs with
``torch.cuda.set_sync_debug_mode`` on, and the steps are counted.

    CHECK_SYNC_DEBUG=error CHECK_STEPS_FILE=/tmp/steps torchrun --nproc_per_node=2 \
        benchmarks/gpu_check/train_watched.py experiment=smoke ...

``CHECK_SYNC_DEBUG``: ``error`` (a step that makes the host wait for the GPU fails the run) or
``warn`` (each such wait is counted instead: gloo on CUDA tensors waits by design). Each rank
writes ``{"steps": N, "syncs": M}`` to ``$CHECK_STEPS_FILE.<rank>`` when it exits.
``CHECK_KILL_AT=N``: each rank SIGKILLs itself right after step N and its checkpoint (the
kill -9 and resume part). Both through the training loop's :class:`alexnet_mp.train.StepHooks`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, hydra_run_dir, run_hydra
from alexnet_mp.train import StepHooks, train

COUNTS = {"steps": 0, "syncs": 0}


@contextlib.contextmanager
def _watched_step():
    """One training step under ``torch.cuda.set_sync_debug_mode``, counted (with the host syncs
    it made, in ``warn`` mode)."""
    if not torch.cuda.is_available():
        COUNTS["steps"] += 1
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(os.environ.get("CHECK_SYNC_DEBUG", "error"))
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    COUNTS["syncs"] += sum("synchroniz" in str(w.message) for w in caught)
    COUNTS["steps"] += 1


def _kill_after(step: int):
    """SIGKILL this process right after ``step`` and its checkpoint: a crash without warning."""
    def kill(state) -> None:
        if state.position.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return kill


def _hooks() -> StepHooks:
    kill = int(os.environ.get("CHECK_KILL_AT", "0"))
    return StepHooks(around_step=_watched_step, after_step=(_kill_after(kill),) if kill else ())


def _write_counts() -> None:
    path = os.environ.get("CHECK_STEPS_FILE")
    if path:
        Path(f"{path}.{os.environ.get('RANK', '0')}").write_text(json.dumps(COUNTS))


def main(cfg: DictConfig, job: Job) -> None:
    """launch/train.py's main, each step the watched one."""
    job.run(lambda: train(cfg, hydra_run_dir(), hooks=_hooks(), launcher=job.launcher), cfg)


if __name__ == "__main__":
    atexit.register(_write_counts)
    run_hydra(main, config_name="config", config_path="../../conf", check_run_dir=True)
