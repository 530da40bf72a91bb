"""``train()``: one training run (sec. 5) from set-up to summary, each stage in its module."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from alexnet_mp.job.checkpoint import CheckpointStore
from alexnet_mp.job.launcher import Launcher
from alexnet_mp.job.preempt import PreemptionFlag
from alexnet_mp.job.rundir import RunLock
from alexnet_mp.train.finish import finish_run
from alexnet_mp.train.loop import train_epochs
from alexnet_mp.train.start import agree_on_run_dir, place_run, scheme_of, start_run
from alexnet_mp.train.step import StepHooks
from alexnet_mp.train.stop import lost_processes_stop_the_run

__all__ = ["train"]


def train(cfg: DictConfig, run_dir: Path, hooks: StepHooks = StepHooks(), launcher: Launcher | None = None) -> dict:
    """Run (or resume) one training run in ``run_dir``; return the summary (every rank).

    ``cfg`` is composed over :class:`alexnet_mp.config.train.TrainConfig` and checked with
    :func:`alexnet_mp.config.check` (``launch/train.py`` does both). ``hooks``: what a caller
    adds to each step (:class:`StepHooks`; none from launch/train.py). ``launcher``: this
    process's launcher and the job's notes (the command's :attr:`alexnet_mp.job.cli.Job.launcher`);
    None: read here, for a caller without a job."""
    launcher = launcher if launcher is not None else Launcher.of_this_process()
    placement = place_run(cfg)
    # Before the loader's workers fork: they inherit the flag. Restored when the run ends well only.
    with PreemptionFlag.installed(launcher) as stop:
        run_dir = agree_on_run_dir(run_dir)
        # scheme=hybrid: every process its own shard (its block of fc6 and fc7); else one per tower.
        hybrid = scheme_of(cfg) == "hybrid" and placement.world_size > 1
        store = CheckpointStore(run_dir, placement.rank if hybrid else placement.tower,
                                writer=hybrid or placement.writer, main=placement.main, keep=int(cfg.checkpoint.keep))
        with lost_processes_stop_the_run(placement, store, launcher):
            lock = RunLock(run_dir, placement.main)  # and the run directory is writable
            try:
                run = start_run(cfg, run_dir, placement, store, launcher)
                started = time.perf_counter()
                stopped_early = train_epochs(run.state, run.inputs, run.checkpoints, run.metrics, cfg,
                                             main=placement.main, stop=stop, hooks=hooks)
                summary = finish_run(run, stopped_early, started)
            finally:
                lock.release()
    return summary
