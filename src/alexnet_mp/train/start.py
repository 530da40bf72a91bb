"""Run set-up: this process's place among the towers and replicas (``place_run``), the one
run directory every rank agrees on, whether it may be started or resumed, the data checks,
the run state built and resumed, and ``config.yaml`` written beside it (``start_run``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alexnet_mp.parallel import comm
from alexnet_mp.parallel import ranks
from alexnet_mp.job.checkpoint import CheckpointStore
from alexnet_mp.job.launcher import Launcher
from alexnet_mp.errors import UserError
from alexnet_mp.io import atomic_write
from alexnet_mp.job.metrics_log import MetricsLog
from alexnet_mp.parallel.placement import Placement, place
from alexnet_mp.job.rundir import make_run_dir
from alexnet_mp.train.checkpoint_policy import Checkpoints, model_signature, shards_of
from alexnet_mp.train.inputs import Data, Inputs, build_data
from alexnet_mp.train.state import RunState, Speed, build_run_state

__all__ = ["Run", "place_run", "agree_on_run_dir", "check_run_dir", "scheme_of", "start_run"]

log = logging.getLogger("alexnet_mp")


@dataclass
class Run:
    """A run ready to train: its config and directory, where this process is, the data, the
    run state (resumed if asked), the batches, the checkpoints and the metrics log."""

    cfg: DictConfig
    run_dir: Path
    placement: Placement
    data: Data
    state: RunState
    inputs: Inputs
    checkpoints: Checkpoints
    metrics: MetricsLog


def place_run(cfg: DictConfig) -> Placement:
    """This process's place among the replicas of the tower pair, after checking the model
    and the global batch fit this many processes. ``scheme=data`` and ``hybrid`` lay every
    process out as a replica of the one-process net (:func:`scheme_of`)."""
    towers = 2 if cfg.model.name == "full" and scheme_of(cfg) == "towers" else 1
    placement = place(towers, threads=int(cfg.threads), device=str(cfg.device), timeout_s=float(cfg.dist_timeout_s),
                      backend=str(cfg.get("dist_backend", "auto")))
    if placement.main:
        log.info("%s", placement.description)
    if int(cfg.batch_size) % placement.replicas:
        raise UserError(f"batch_size={cfg.batch_size} is the global batch and must split evenly over the "
                        f"{placement.replicas} replicas of this launch (WORLD_SIZE={placement.world_size})")
    return placement


def scheme_of(cfg: DictConfig) -> str:
    """How the net is split over the processes: ``towers`` (the default), ``data`` or ``hybrid``."""
    return str(cfg.scheme.name) if "scheme" in cfg else "towers"


def check_run_dir(run_dir: Path, store: CheckpointStore, resume: bool | str) -> None:
    """``resume``: True (there must be a run to resume), "auto" (resume one if there is) or False."""
    finished = (run_dir / "summary.json").is_file()
    if resume:
        if finished:
            raise UserError(f"the run in {run_dir} has already finished (summary.json); nothing to resume")
        if resume is True and not store.has_any():
            raise UserError(f"resume=true but {run_dir} holds no checkpoint to resume (is hydra.run.dir right?); "
                            f"pass resume=auto to start a new run there when there is none")
        return
    if finished or store.has_any():
        raise UserError(f"{run_dir} already holds a run; pass resume=true (or resume=auto) to continue it, "
                        f"or choose another hydra.run.dir")


def agree_on_run_dir(mine: Path) -> Path:
    """Rank 0's run directory on every rank: Hydra's timestamped default can differ by a
    second between processes, so the others follow rank 0 and drop their empty folder."""
    agreed = Path(ranks.broadcast_object(str(mine)))
    if agreed.resolve() != mine.resolve() and mine.is_dir() and not any(mine.iterdir()):
        mine.rmdir()
    make_run_dir(agreed)
    return agreed


def start_run(cfg: DictConfig, run_dir: Path, placement: Placement, store: CheckpointStore,
              launcher: Launcher | None = None) -> Run:
    """Check the run directory and the data, build the run state and resume it if asked.
    ``launcher``: the job's notes (:func:`alexnet_mp.data.base_datasets`)."""
    device, main = placement.device, placement.main
    resume = _resume_asked(cfg, run_dir, main)
    check_run_dir(run_dir, store, resume)
    ranks.barrier()

    d = build_data(cfg, run_dir, main, launcher)
    _check_data(cfg, d)
    comm.set_profile(bool(cfg.profile))
    # The recipe as the schema's objects (ModelConfig, OptimConfig, ScheduleConfig, SchemeConfig), typed end to end.
    model_cfg, optim_cfg, schedule_cfg = (OmegaConf.to_object(node) for node in (cfg.model, cfg.optim, cfg.schedule))
    scheme_cfg = OmegaConf.to_object(cfg.scheme) if cfg.get("scheme") is not None else None
    state = build_run_state(model_cfg, optim_cfg, schedule_cfg, num_classes=d.num_classes, input_size=d.crop,
                            seed=int(cfg.seed), device=device, speed=Speed.from_config(cfg),
                            overlap=bool(cfg.comm.overlap), placement=placement, scheme=scheme_cfg,
                            batch_size=int(cfg.batch_size))
    checkpoints = Checkpoints(store, model_signature(cfg, d.num_classes, d.crop, shards_of(cfg, placement)), cfg)
    latest = checkpoints.resume(state) if resume else None
    p = state.position
    if latest is not None and main:
        log.info("resuming from %s (epoch %d, batch %d, step %d)", latest, p.epoch, p.batch_in_epoch, p.step)
    elif resume and main:
        log.info("%s: %s has no checkpoint yet; starting from scratch",
                 "resume=auto" if cfg.resume == "auto" else "torchrun restart", run_dir)

    inputs = Inputs(cfg, d, device, int(cfg.batch_size), shard=(placement.replica, placement.replicas),
                    tower_group=placement.tower_group)
    run = Run(cfg, run_dir, placement, d, state, inputs, checkpoints,
              MetricsLog(run_dir, enabled=main, last_epoch=p.epoch))
    if main:
        _record_start(run)
    return run


def _resume_asked(cfg: DictConfig, run_dir: Path, main: bool) -> bool | str:
    """True, "auto" or False (:func:`check_run_dir`)."""
    # A job that torchrun restarted (--max-restarts) resumes from its latest checkpoint by itself,
    # or starts afresh when the failed attempt saved none: as resume=auto.
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts and main:
        log.info("torchrun restart %d: resuming from the latest checkpoint in %s", restarts, run_dir)
    # true, false or "auto" (the schema checks the word); a restart resumes what it finds, as auto
    return "auto" if restarts and cfg.resume is False else cfg.resume


def _check_data(cfg: DictConfig, d: Data) -> None:
    if str(cfg.model.num_classes) not in ("auto", str(d.num_classes)):
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the data has {d.num_classes} classes")
    if len(d.val) == 0:
        raise UserError("the validation split has no images: validation error (and the learning-rate drops "
                        "that follow it) would mean nothing")
    if len(d.train) < int(cfg.batch_size):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the {len(d.train)} training images; "
                        f"an epoch would have no step")


def _record_start(run: Run) -> None:
    """The main process writes the resolved ``config.yaml`` and says what is trained where."""
    cfg, placement, d, device = run.cfg, run.placement, run.data, run.placement.device
    atomic_write(run.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    where = (f"1 process, {device}" if placement.world_size == 1 else
             f"{placement.replicas} replica(s) x {placement.towers} tower(s), {device.type}"
             if scheme_of(cfg) == "towers" else f"scheme={scheme_of(cfg)} on {placement.world_size} processes, "
                                                f"{device.type}")
    log.info("training %s net (%s): %d train / %d val images, %d classes, %dpx crops, augmentation on the %s, "
             "run dir %s", cfg.model.name, where, len(d.train), len(d.val), d.num_classes, d.crop,
             "loader workers" if run.inputs.in_workers else device.type, run.run_dir)
