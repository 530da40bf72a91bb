"""launch/train.py under the device check's watch: each training step runs with
``torch.cuda.set_sync_debug_mode`` on, and the steps are counted.

    CHECK_SYNC_DEBUG=error CHECK_STEPS_FILE=/tmp/steps torchrun --nproc_per_node=2 \
        benchmarks/gpu_check_train.py experiment=smoke ...

``CHECK_SYNC_DEBUG``: ``error`` (a step that makes the host wait for the GPU fails the run) or
``warn`` (each such wait is counted instead: gloo on CUDA tensors waits by design). Each rank
writes ``{"steps": N, "syncs": M}`` to ``$CHECK_STEPS_FILE.<rank>`` when it exits.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import check_run_dir_override, hydra_run_dir, run_entry_point, run_hydra
from alexnet_mp.train import StepHooks, train, train_step

COUNTS = {"steps": 0, "syncs": 0}


def _watched(step):
    mode = os.environ.get("CHECK_SYNC_DEBUG", "error")

    def watched_step(*args, **kwargs):
        if not torch.cuda.is_available():
            COUNTS["steps"] += 1
            return step(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(mode)
            try:
                result = step(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        COUNTS["syncs"] += sum("synchroniz" in str(w.message) for w in caught)
        COUNTS["steps"] += 1
        return result

    return watched_step


def _write_counts() -> None:
    path = os.environ.get("CHECK_STEPS_FILE")
    if path:
        Path(f"{path}.{os.environ.get('RANK', '0')}").write_text(json.dumps(COUNTS))


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """launch/train.py's main, each step the watched one."""
    run_entry_point(lambda: train(cfg, hydra_run_dir(), hooks=StepHooks(step=_watched(train_step))), cfg)


if __name__ == "__main__":
    atexit.register(_write_counts)
    check_run_dir_override(sys.argv[1:])
    run_hydra(main)
