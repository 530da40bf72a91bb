"""Train AlexNet with the paper's recipe (Krizhevsky et al. 2012, sec. 5), one tower per process.

    torchrun --nproc_per_node=2 launch/train.py                       # the two-tower net, synthetic data
    torchrun --nproc_per_node=2 launch/train.py data=imagefolder data.root=PATH
    python launch/train.py model=half                                 # the one-GPU half net
    torchrun --nproc_per_node=2 launch/train.py hydra.run.dir=DIR resume=true

Two processes train the full net as two towers; one process trains either net
whole. Every rank computes the same loss and metrics (the logits are gathered on
every device); only rank 0 prints and writes shared files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import provenance
from alexnet_mp import comm, data
from alexnet_mp.data import BatchAugment, base_datasets
from alexnet_mp.checkpoint import CheckpointStore, atomic_save, atomic_write_text
from alexnet_mp.cli import another_rank_reported
from alexnet_mp.config.schema import flatten
from alexnet_mp.config.train import RESUME_MAY_CHANGE
from alexnet_mp.errors import QuietStop, UserError
from alexnet_mp.preempt import PreemptionFlag, StopRequested, save_on_stop
from alexnet_mp.rundir import RunLock, make_run_dir, resume_mode
from alexnet_mp.model import AlexNet, arch_options, build_model
from alexnet_mp.optim import PlateauSchedule, build_optimizer, param_groups
from alexnet_mp.parallel import Placement, full_state_dict, parallelize, place
from alexnet_mp.progress import Progress
from alexnet_mp.report import MetricsLog

__all__ = ["train", "train_step", "train_epoch", "build_run_state", "RunState", "Position", "Speed", "Checkpoints",
           "Data", "Inputs", "build_data", "build_augment", "evaluate", "topk_errors", "topk_wrong"]

log = logging.getLogger("alexnet_mp")


# -- the configuration ----------------------------------------------------------------------
# The schema (alexnet_mp.config.train) types and checks every key; the launcher checks the
# composed config before train() runs.


# -- processes and devices -----------------------------------------------------------------------

def _place(cfg: DictConfig) -> Placement:
    """This process's place among the replicas of the tower pair, after checking the model
    and the global batch fit this many processes."""
    towers = 2 if cfg.model.name == "full" else 1
    placement = place(towers, threads=int(cfg.threads), device=str(cfg.device), timeout_s=float(cfg.dist_timeout_s),
                      backend=str(cfg.get("dist_backend", "auto")))
    if placement.main:
        log.info("%s", placement.description)
    if int(cfg.batch_size) % placement.replicas:
        raise UserError(f"batch_size={cfg.batch_size} is the global batch and must split evenly over the "
                        f"{placement.replicas} replicas of this launch (WORLD_SIZE={placement.world_size})")
    return placement


# -- data ---------------------------------------------------------------------------------------

@dataclass
class Data:
    """Both splits as stored uint8 images, the training-set statistics and the crop size."""

    train: Any
    val: Any
    stats: data.DatasetStats
    num_classes: int
    image_size: int
    crop: int


def build_data(cfg: DictConfig, run_dir: Path, main: bool) -> Data:
    """Both splits; the statistics come from the prepared dataset or from the main process's cache."""
    dcfg = cfg.data
    train_base, val_base, root, stats = base_datasets(dcfg)
    crop = data.crop_size_for(int(dcfg.image_size), str(cfg.model.geometry))
    if stats is None:
        outcome = None
        if main:
            # Cached beside the data when it is writable (reused by later runs), else in the run.
            cache = run_dir / "dataset-stats.pt"
            if root is not None and str(dcfg.stats_cache) == "data" and _writable(root):
                cache = root / f".alexnet_mp-stats-{dcfg.image_size}px.pt"
            try:
                outcome = data.load_or_compute_stats(train_base, cache, int(dcfg.stats_samples), int(dcfg.seed),
                                                     progress=bool(cfg.progress))
            except UserError as err:
                outcome = err
        # Every rank gets the statistics, or the same error, so none waits for a rank that failed.
        outcome = comm.broadcast_object(outcome if isinstance(outcome, data.DatasetStats) else str(outcome))
        if not isinstance(outcome, data.DatasetStats):
            raise UserError(outcome)
        stats = outcome
    return Data(train_base, val_base, stats, len(train_base.classes), int(dcfg.image_size), crop)


def build_augment(cfg: DictConfig, d: Data, device: torch.device | str, *, reuse_output: bool = False) -> BatchAugment:
    dcfg = cfg.data
    return BatchAugment(d.stats, d.crop, seed=int(cfg.seed), device=device, flip=bool(dcfg.flip),
                        pca_sigma=float(dcfg.pca_sigma), pca_scale=str(dcfg.pca_scale),
                        mean_subtraction=bool(dcfg.mean_subtraction), reuse_output=reuse_output)


class _InWorkers:
    """``data.augment=workers``: the loader workers crop and colour on the CPU (picklable)."""

    def __init__(self, augment: BatchAugment, train: bool):
        self.augment, self.train = augment, train

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.augment.train(images, indices, epoch) if self.train else self.augment.centre(images)


class Inputs:
    """The training and validation batches as the net's input on ``device``.

    Loaders read stored uint8 batches (persistent workers, prefetch, pinned memory for a
    GPU); :class:`BatchAugment` turns them into crops on ``device`` (``data.augment=device``,
    the default) or in the workers (``data.augment=workers``).
    """

    def __init__(self, cfg: DictConfig, d: Data, device: torch.device, batch_size: int,
                 shard: tuple[int, int] = (0, 1)):
        self.device = device
        self.tower_group = None  # this replica's tower pair (debug.check_batches compares within it)
        # Each batch is trained on before the next is made: its buffer can be reused.
        self.augment = build_augment(cfg, d, device, reuse_output=True)
        self.in_workers = str(cfg.data.augment) == "workers"
        cpu_augment = build_augment(cfg, d, "cpu") if self.in_workers else None
        # Each replica reads its rows of every global batch (both towers of a replica the same rows).
        kw = dict(seed=int(cfg.seed), workers=_workers(cfg.data), pin_memory=device.type == "cuda", shard=shard)
        self.train = data.BatchLoader(d.train, batch_size, shuffle=True, drop_last=True,
                                      transform=_InWorkers(cpu_augment, True) if cpu_augment else None, **kw)
        self.val = data.BatchLoader(d.val, batch_size, shuffle=False, drop_last=False,
                                    transform=_InWorkers(cpu_augment, False) if cpu_augment else None, **kw)

    def train_input(self, batch: data.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        return (images if self.in_workers else self.augment.train(images, batch.indices, batch.epoch)), labels

    def val_input(self, batch: data.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        return (images if self.in_workers else self.augment.centre(images)), labels


def _writable(folder: Path) -> bool:
    # os.access says yes to root even for a folder without write bits (a read-only
    # dataset mount, shared data); respect the bits too.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _workers(dcfg: DictConfig) -> int:
    return data.default_workers() if str(dcfg.workers) == "auto" else int(dcfg.workers)


# -- metrics ----------------------------------------------------------------------------------

def topk_wrong(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 and top-5 mistakes in a batch as a tensor [2] on the logits' device (no host
    wait); top-k is capped at the class count."""
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    return torch.stack([(~hit[:, 0]).sum(), (~hit.any(1)).sum()])


def topk_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Number of top-1 and top-5 mistakes in a batch (top-k capped at the class count)."""
    w1, w5 = topk_wrong(logits, labels).tolist()
    return int(w1), int(w5)


@torch.no_grad()
def evaluate(state: "RunState", inputs: Inputs, *, progress: bool = False, stop: PreemptionFlag | None = None) -> dict:
    """Centre-crop top-1 and top-5 error over the whole validation set; each replica
    evaluates its rows of every batch and the counts are summed, so each image counts once.
    ``stop``: a stop signal ends it between batches (the run re-evaluates on resume)."""
    model = state.model
    model.eval()
    wrong = torch.zeros(2, dtype=torch.int64, device=inputs.device)
    seen = skipped = 0
    loader = inputs.val.epoch(0)
    with Progress(len(loader), "validation", unit="batch", enabled=progress, scale=inputs.val.batch_size,
                  scale_unit="images") as bar:
        for batch in loader:
            skipped += batch.skipped
            bar.update(1)
            if stop is not None:
                stop.check()
            if not len(batch):
                continue
            images, labels = inputs.val_input(batch)
            wrong += topk_wrong(state.logits(images), labels)
            seen += len(batch)
    model.train()
    counts = comm.sum_over(torch.cat([wrong, torch.tensor([seen, skipped], device=wrong.device)]),
                           state.replica_group)
    wrong1, wrong5, seen, skipped = counts.tolist()
    return {"val_top1_err": wrong1 / max(seen, 1), "val_top5_err": wrong5 / max(seen, 1), "val_images": seen,
            "val_skipped": skipped}


# -- the run directory ------------------------------------------------------------------------

def _model_signature(cfg: DictConfig, num_classes: int, crop: int, towers: int) -> dict:
    """What a checkpoint must match to be resumed. Not the replica count: a run resumes on
    any number of replicas of the same towers."""
    return {"name": str(cfg.model.name), "num_classes": num_classes, "input_size": crop,
            **arch_options(cfg.model), "towers": towers}


def _check_run_dir(run_dir: Path, store: CheckpointStore, resume: bool) -> None:
    finished = (run_dir / "summary.json").is_file()
    if resume:
        if finished:
            raise UserError(f"the run in {run_dir} has already finished (summary.json); nothing to resume")
        return
    if finished or store.has_any():
        raise UserError(f"{run_dir} already holds a run; pass resume=true (or resume=auto) to continue it, "
                        f"or choose another hydra.run.dir")


def _check_resumable(saved: dict, now: dict, folder: Path) -> None:
    """What may differ between a run and its resumption is the schema's: the fields marked
    ``resume="may_change"`` (how long the run goes, how it reports, how fast it runs)."""
    before, after = flatten(saved), flatten(now)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith(RESUME_MAY_CHANGE))
    if changed:
        listed = ", ".join(f"{k}={before.get(k)!r} here {after.get(k)!r}" for k in changed[:6])
        raise UserError(f"checkpoint {folder} was written with another configuration ({listed}); "
                        f"resume with the same settings or start a new run directory")


def _agree_on_run_dir(mine: Path) -> Path:
    """Rank 0's run directory on every rank: Hydra's timestamped default can differ by a
    second between processes, so the others follow rank 0 and drop their empty folder."""
    agreed = Path(comm.broadcast_object(str(mine)))
    if agreed.resolve() != mine.resolve() and mine.is_dir() and not any(mine.iterdir()):
        mine.rmdir()
    make_run_dir(agreed)
    return agreed


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _throughput(history: list[dict]) -> float | None:
    """Training images per second over every finished epoch."""
    seconds = sum(h["seconds"] for h in history)
    return sum(h["images_per_s"] * h["seconds"] for h in history) / seconds if seconds else None


# -- the run state: what a checkpoint holds ----------------------------------------------------

@dataclass
class Position:
    """Where the run is: epoch, batch within it, optimizer steps, and the epoch's running totals."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    epoch_loss: float = 0.0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    data_seconds: float = 0.0  # of epoch_seconds, waiting for the loader
    skipped: int = 0

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss, self.epoch_images, self.epoch_seconds, self.data_seconds, self.skipped = 0.0, 0, 0.0, 0.0, 0


@dataclass(frozen=True)
class Speed:
    """How the step runs, not what it computes (within float tolerance). Recorded in the run's
    config and in every benchmark result.

    ``precision``: ``fp32``, or ``bf16`` autocast (convolutions and matmuls in bfloat16; LRN,
    softmax and the loss in fp32, where bf16 would hurt). ``channels_last``: NHWC activations
    (faster convolutions on tensor cores). ``compile``: ``torch.compile`` of the net (a tower's
    collectives are graph breaks). ``cudnn_benchmark``: let cuDNN time its algorithms.
    ``tf32``: TF32 matmuls and convolutions on Ampere and later GPUs; off by default, so fp32
    means fp32 (PyTorch's own defaults differ: on for convolutions, off for matmuls).
    ``compile_mode``: torch.compile's mode (:data:`alexnet_mp.config.train.COMPILE_MODES`); ``reduce-overhead`` adds
    CUDA graphs, which take the kernel launches off the host. ``deterministic``: the same
    numbers on every run (``torch.use_deterministic_algorithms``, deterministic cuDNN): kernels
    built on atomics otherwise round differently from run to run.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False
    compile_mode: str = "default"
    deterministic: bool = False

    KEYS = ("precision", "channels_last", "compile", "cudnn_benchmark", "tf32", "compile_mode", "deterministic")

    @classmethod
    def from_config(cls, cfg: Any) -> "Speed":
        return cls(**{k: cfg.get(k, getattr(cls, k)) for k in cls.KEYS})

    @property
    def cuda_graphs(self) -> bool:
        return self.compile and self.compile_mode == "reduce-overhead"

    def apply_backends(self) -> None:
        """The process-wide switches: TF32 and cuDNN's algorithm search."""
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark and not self.deterministic
        torch.backends.cudnn.deterministic = self.deterministic
        if self.deterministic:  # cuBLAS reads it when it starts: deterministic matmul workspaces
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(self.deterministic)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


class RunState:
    """The model (a tower or the whole net), its optimizer and schedule, the RNG and the
    position: everything a checkpoint holds, through ``state_dict`` / ``load_state_dict``.

    The step's loss is summed on the device (``loss_sum``, ``loss_images``) and read only
    by :meth:`flush_loss`, every ``log_every_steps`` and at checkpoints: reading it every
    step would make the host wait for the device.
    """

    def __init__(self, model: AlexNet, optimizer: torch.optim.Optimizer, schedule: PlateauSchedule,
                 device: torch.device, speed: Speed = Speed(), placement: Placement | None = None):
        self.model, self.optimizer, self.schedule, self.device, self.speed = model, optimizer, schedule, device, speed
        self.replicas = placement.replicas if placement else 1
        self.replica_group = placement.replica_group if placement else None
        forward: torch.nn.Module = model
        if self.replicas > 1:
            # Gradients averaged over the replicas, bucketed and overlapped with the backward
            # pass. Every replica starts from the same weights (same seed, or the same shard).
            forward = DistributedDataParallel(model, process_group=self.replica_group,
                                              device_ids=[device] if device.type == "cuda" else None)
        # The compiled net shares its parameters with ``model``, which the checkpoints hold.
        self.forward = torch.compile(forward, mode=speed.compile_mode) if speed.compile else forward
        self.position = Position()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_images = 0

    def flush_loss(self) -> float | None:
        """Move the device's loss sum into the position (one host read); returns the mean
        loss since the last flush, or None when no step ran since."""
        if not self.loss_images:
            return None
        # Each replica's loss is its rows' mean: the global batch's is the sum over replicas.
        total = float(comm.sum_over(self.loss_sum, self.replica_group))
        mean = total / (self.loss_images * self.replicas)
        self.position.epoch_loss += total
        self.loss_sum.zero_()
        self.loss_images = 0
        return mean

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The net's fp32 logits for a batch on the device, with the speed options applied."""
        if self.speed.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = self.speed.autocast_dtype
        if self.speed.cuda_graphs and self.device.type == "cuda":
            # A new step: the graphs may overwrite the outputs of the last replay, which are used up.
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = self.forward(images)
        return logits.float()  # softmax and the loss in fp32

    def state_dict(self) -> dict:
        self.flush_loss()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": _rng_state(self.device),
                "position": dict(vars(self.position))}

    def load_state_dict(self, shard: dict) -> None:
        self.model.load_state_dict(shard["model"])
        self.optimizer.load_state_dict(shard["optimizer"])
        self.schedule.load_state_dict(shard["schedule"])
        _set_rng_state(shard["rng"], self.device)
        self.position = Position(**{"data_seconds": 0.0, **shard["position"]})


def build_run_state(model_cfg: Any, optim_cfg: Any, schedule_cfg: Any, *, num_classes: int, input_size: int,
                    seed: int, device: torch.device, world: int, speed: Speed = Speed(),
                    overlap: bool = True, placement: Placement | None = None) -> RunState:
    """The net from ``seed`` (the same weights on every rank; a tower keeps its share), on
    ``device``, with the optimizer and schedule of sec. 5. Configs are mappings with the keys
    of ``conf/model``, ``conf/optim`` and ``conf/schedule``."""
    torch.manual_seed(seed)
    model = build_model(str(model_cfg["name"]), num_classes=num_classes, input_size=input_size,
                        init=str(model_cfg["init"]), **arch_options(model_cfg))
    if placement is not None and placement.towers == 2:
        model = parallelize(model, group=placement.tower_group, device=device, overlap=overlap)
    else:
        model = parallelize(model, device=device, overlap=overlap) if world == 2 else model.to(device)
    if placement is not None and placement.replicas > 1:
        model.share_batch(placement.replica, placement.replicas)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    speed.apply_backends()
    groups = param_groups(model, weight_decay=float(optim_cfg["weight_decay"]),
                          bias_decay=bool(optim_cfg.get("bias_decay", True)),
                          bias_lr_mult=float(optim_cfg.get("bias_lr_mult", 1.0)))
    optimizer = build_optimizer(groups, lr=float(optim_cfg["lr"]), momentum=float(optim_cfg["momentum"]),
                                weight_decay=float(optim_cfg["weight_decay"]), rule=str(optim_cfg["rule"]))
    schedule = PlateauSchedule(optimizer, **{k: schedule_cfg[k] for k in
                                             ("factor", "patience", "threshold", "max_drops", "warmup_steps")})
    torch.manual_seed(seed + 1)  # dropout's stream, saved and restored with the checkpoint
    return RunState(model, optimizer, schedule, device, speed, placement)


# -- one step ------------------------------------------------------------------------------------

def train_step(state: RunState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One SGD step on a batch already on the device; returns the (detached) loss on the device.

    Nothing here waits for the device: the loss is added to ``state.loss_sum``, and a
    non-finite loss is found when it is read (:meth:`RunState.flush_loss`).
    """
    loss = F.cross_entropy(state.logits(images), labels)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.schedule.begin_step(state.position.step + 1)
    state.optimizer.step()
    loss = loss.detach()
    state.loss_sum += loss.double() * len(labels)
    state.loss_images += len(labels)
    state.position.step += 1
    state.position.batch_in_epoch += 1
    state.position.epoch_images += len(labels) * state.replicas  # the global batch
    return loss


# -- checkpointing -------------------------------------------------------------------------------

class Checkpoints:
    """Saves and restores the run state through :class:`CheckpointStore` (atomic, per tower)."""

    def __init__(self, store: CheckpointStore, signature: dict, cfg: DictConfig):
        self.store, self.signature = store, signature
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def diverged(self, what: str, state: RunState) -> UserError:
        return UserError(f"{what} at epoch {state.position.epoch + 1}, step {state.position.step}; stopped. "
                         f"Last good checkpoint: {self.store.last_good([0, 1]) or 'none'} (try a lower optim.lr)")

    def check_loss(self, state: RunState) -> float | None:
        """Read the loss summed on the device since the last read; raise on every rank if it is not finite."""
        loss = state.flush_loss()
        if not comm.all_ranks(loss is None or math.isfinite(loss)):
            raise self.diverged(f"the loss became {loss}", state)
        return loss

    def save(self, state: RunState, reason: str) -> Path:
        self.check_loss(state)
        finite = all(bool(torch.isfinite(p).all()) for p in state.model.parameters())
        if not comm.all_ranks(finite):
            raise self.diverged("the weights became non-finite", state)
        p = state.position
        name = f"step-{p.step:08d}-epoch-{p.epoch:04d}-batch-{p.batch_in_epoch:07d}"
        latest = self.store.latest()
        if latest is not None and latest.name == name:
            return latest  # this position is saved already (every_steps fell on the same step)
        return self.store.save(name, state.state_dict(),
                        {"model": self.signature, "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch,
                         "step": p.step, "reason": reason, "config": self.config})

    def resume(self, state: RunState) -> Path | None:
        """Collective: load the newest checkpoint that passes its checks on every rank."""
        latest, skipped = self.store.choose()
        if latest is None:
            if skipped:
                raise UserError(f"no usable checkpoint in {self.store.root} ({'; '.join(skipped)}); "
                                f"start a new run directory or restore a copy")
            return None
        shard, meta = self.store.load(latest, self.signature)
        _check_resumable(meta.get("config", {}), self.config, latest)
        state.load_state_dict(shard)
        return latest


# -- the epoch loop ------------------------------------------------------------------------------

def train_epoch(state: RunState, inputs: Inputs, checkpoints: Checkpoints, metrics: MetricsLog,
                cfg: DictConfig, *, main: bool, stop: PreemptionFlag | None = None) -> bool:
    """Train the rest of the current epoch; returns False when ``debug.max_steps`` stopped it.
    ``stop``: every rank asks after each step whether a stop signal came (preempt.py)."""
    p = state.position
    every, log_every = int(cfg.checkpoint.every_steps), int(cfg.log_every_steps)
    max_steps, kill_at = int(cfg.debug.max_steps), int(cfg.debug.kill_at_step)
    kill_rank = int(cfg.debug.kill_rank)
    check_batches = bool(cfg.debug.check_batches)
    loader = inputs.train.epoch(p.epoch, start_batch=p.batch_in_epoch)
    with Progress(len(inputs.train), f"epoch {p.epoch + 1}/{cfg.epochs}", unit="batch", initial=p.batch_in_epoch,
                  enabled=main and bool(cfg.progress), scale=inputs.train.batch_size, scale_unit="images",
                  every_steps=log_every * 10) as bar:
        tick = time.perf_counter()
        batches = iter(loader)
        while True:
            wait = time.perf_counter()
            batch = next(batches, None)  # the time the step waits for the loader
            p.data_seconds += time.perf_counter() - wait
            if batch is None:
                break
            p.skipped += batch.skipped
            if not len(batch):
                p.batch_in_epoch += 1
                continue
            images, labels = inputs.train_input(batch)
            if check_batches and not comm.all_equal(torch.stack([images.sum(), labels.sum().to(images)]),
                                                    group=inputs.tower_group):
                raise RuntimeError("the towers received different batches")
            train_step(state, images, labels)
            bar.update(1)
            if p.step % log_every == 0 or p.step == 1:
                loss = checkpoints.check_loss(state)
                now = time.perf_counter()
                p.epoch_seconds += now - tick
                tick = now
                bar.update(0, loss=f"{loss:.3f}", lr=f"{state.schedule.lr:.2g}")
                metrics.scalar("train/loss", loss, p.step)
            if every and p.step % every == 0:
                p.epoch_seconds += time.perf_counter() - tick
                checkpoints.save(state, "every_steps")
                tick = time.perf_counter()
            if kill_at == p.step and kill_rank in (-1, dist.get_rank() if dist.is_initialized() else 0) \
                    and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":  # not again after a restart
                os.kill(os.getpid(), signal.SIGKILL)  # a crash without warning, for the tests
            if max_steps and p.step >= max_steps:
                p.epoch_seconds += time.perf_counter() - tick
                return False
            if stop is not None and stop.requested():
                p.epoch_seconds += time.perf_counter() - tick
                raise StopRequested()
        p.epoch_seconds += time.perf_counter() - tick
    checkpoints.check_loss(state)
    return True


@contextlib.contextmanager
def _lost_processes_stop_the_run(placement: Placement, store: CheckpointStore):
    """A lost process never hangs the run: a collective that loses its peer fails (at once
    when the peer's connection closes, after ``dist_timeout_s`` when it hangs) and becomes one
    line naming the lost rank and the last good checkpoint (one whose shards pass their
    checksums). When the peer stopped on an error it has printed, this rank stays quiet.
    torchrun's SIGTERM to the survivors only sets the stop flag (preempt.py): the next
    collective finds the lost peer."""
    if placement.world_size == 1:
        yield
        return
    try:
        yield
    except RuntimeError as err:
        if not comm.is_lost_peer(err):
            raise
        if another_rank_reported():
            raise QuietStop() from None
        who = (f"rank {1 - placement.rank}" if placement.world_size == 2
               else "another rank (torchrun's report names it)")
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        why = re.sub(r"^\[[^\]]*\]\s*", "", why).split(". ")[0][:160]  # gloo's "[file:line] Read error ...: reset"
        raise UserError(f"lost {who} of this run ({why}); rank {placement.rank} stopped. Last good checkpoint: "
                        f"{store.last_good(list(range(placement.towers))) or 'none'} "
                        f"(relaunch with resume=true)") from None


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one training run in ``run_dir``; return the summary (every rank).

    ``cfg`` is composed over :class:`alexnet_mp.config.train.TrainConfig` and checked with
    :func:`alexnet_mp.config.check` (``launch/train.py`` does both)."""
    placement = _place(cfg)
    main = placement.main
    stop = PreemptionFlag.install()  # before the loader's workers fork: they inherit the flag
    run_dir = _agree_on_run_dir(run_dir)
    store = CheckpointStore(run_dir, placement.tower, writer=placement.writer, main=main,
                            keep=int(cfg.checkpoint.keep))
    with _lost_processes_stop_the_run(placement, store):
        lock = RunLock(run_dir, main)  # and the run directory is writable
        try:
            summary = _run(cfg, run_dir, placement, store, stop)
        finally:
            lock.release()
    # Only now: on an error the flag stays, so torchrun's SIGTERM cannot cut the one line short.
    stop.restore()
    return summary


def _train_epochs(state: RunState, inputs: Inputs, checkpoints: Checkpoints, metrics: MetricsLog, cfg: DictConfig,
                  *, main: bool, stop: PreemptionFlag) -> bool:
    """Every remaining epoch, each evaluated and checkpointed; True when ``debug.max_steps`` stopped it."""
    p = state.position
    # A stop signal: every rank saves this position and leaves (cli.py prints it, exit 75).
    with save_on_stop(stop, lambda: checkpoints.save(state, "preempted"), lambda: state.position.step):
        while p.epoch < int(cfg.epochs):
            if not train_epoch(state, inputs, checkpoints, metrics, cfg, main=main, stop=stop):
                checkpoints.save(state, "max_steps")  # a clean stop: resume=true with a larger debug.max_steps goes on
                return True
            result = evaluate(state, inputs, progress=main and bool(cfg.progress), stop=stop)
            row = {"epoch": p.epoch + 1, "train_loss": p.epoch_loss / max(p.epoch_images, 1), **result,
                   "train_skipped": int(comm.sum_over(torch.tensor([p.skipped], device=state.device),
                                                       state.replica_group).item()),  # every replica's rows
                   "lr": state.schedule.lr,
                   "images_per_s": p.epoch_images / max(p.epoch_seconds, 1e-9), "seconds": p.epoch_seconds,
                   "data_wait_share": p.data_seconds / max(p.epoch_seconds, 1e-9), "step": p.step}
            dropped = state.schedule.step(result["val_top1_err"])
            metrics.epoch(row)
            if main:
                log.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%%, top-5 %.2f%%, %.0f images/s%s",
                         p.epoch + 1, cfg.epochs, row["train_loss"], 100 * row["val_top1_err"], 100 * row["val_top5_err"],
                         row["images_per_s"], f"; learning rate now {state.schedule.lr:.2g}" if dropped else "")
            p.next_epoch()
            checkpoints.save(state, "epoch")
    return False


def _run(cfg: DictConfig, run_dir: Path, placement: Placement, store: CheckpointStore,
         stop: PreemptionFlag) -> dict:
    device, main = placement.device, placement.main
    # A job that torchrun restarted (--max-restarts) resumes from its latest checkpoint by itself.
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    resume = bool(resume_mode(cfg.resume)) or restarts > 0  # auto: as true, which starts an empty dir
    if restarts and main:
        log.info("torchrun restart %d: resuming from the latest checkpoint in %s", restarts, run_dir)
    _check_run_dir(run_dir, store, resume)
    comm.barrier()

    d = build_data(cfg, run_dir, main)
    if str(cfg.model.num_classes) not in ("auto", str(d.num_classes)):
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the data has {d.num_classes} classes")
    if len(d.val) == 0:
        raise UserError("the validation split has no images: validation error (and the learning-rate drops "
                        "that follow it) would mean nothing")
    if len(d.train) < int(cfg.batch_size):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the {len(d.train)} training images; "
                        f"an epoch would have no step")
    signature = _model_signature(cfg, d.num_classes, d.crop, placement.towers)
    comm.set_profile(bool(cfg.profile))
    state = build_run_state(cfg.model, cfg.optim, cfg.schedule, num_classes=d.num_classes, input_size=d.crop,
                            seed=int(cfg.seed), device=device, world=placement.towers,
                            speed=Speed.from_config(cfg), overlap=bool(cfg.comm.overlap), placement=placement)
    checkpoints = Checkpoints(store, signature, cfg)
    latest = checkpoints.resume(state) if resume else None
    p = state.position
    if latest is not None and main:
        log.info("resuming from %s (epoch %d, batch %d, step %d)", latest, p.epoch, p.batch_in_epoch, p.step)
    elif resume and main:
        log.info("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)

    inputs = Inputs(cfg, d, device, int(cfg.batch_size), shard=(placement.replica, placement.replicas))
    inputs.tower_group = placement.tower_group
    metrics = MetricsLog(run_dir, enabled=main, last_epoch=p.epoch)
    if main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        where = (f"1 process, {device}" if placement.world_size == 1 else
                 f"{placement.replicas} replica(s) x {placement.towers} tower(s), {device.type}")
        log.info("training %s net (%s): %d train / %d val images, %d classes, %dpx crops, augmentation on the %s, "
                 "run dir %s", cfg.model.name, where, len(d.train), len(d.val), d.num_classes, d.crop,
                 "loader workers" if inputs.in_workers else device.type, run_dir)

    run_start = time.perf_counter()
    stopped_early = _train_epochs(state, inputs, checkpoints, metrics, cfg, main=main, stop=stop)

    model = state.model
    final_state = (full_state_dict(model) if placement.towers == 2
                   else {k: v.cpu() for k, v in model.state_dict().items()})
    final = run_dir / "model_final.pt"
    history = metrics.history()
    summary = {
        "model": str(cfg.model.name), "towers": placement.towers, "replicas": placement.replicas,
        "device": device.type, "epochs": p.epoch, "steps": p.step,
        "val_top1_err": history[-1]["val_top1_err"] if history else None,
        "val_top5_err": history[-1]["val_top5_err"] if history else None,
        "train_loss": history[-1]["train_loss"] if history else None,
        "best_val_top1_err": min((h["val_top1_err"] for h in history), default=None),
        "chance_top1_err": 1 - 1 / d.num_classes,
        "images_per_s": _throughput(history),
        "seconds": time.perf_counter() - run_start,
        # Every epoch skips the same unreadable files: count them once, train and val.
        "skipped_images": max((h.get("train_skipped", 0) for h in history), default=p.skipped)
                          + (history[-1].get("val_skipped", 0) if history else 0),
        "final_model": str(final.resolve()),
        "stopped_early": stopped_early,
        "provenance": provenance.record(cfg),
    }
    if main:
        atomic_save({"model": signature, "state_dict": final_state, "provenance": summary["provenance"],
                     "classes": list(d.train.classes),
                     "data": {"name": str(cfg.data.name), "image_size": d.image_size, "crop": d.crop,
                              "config": OmegaConf.to_container(cfg.data, resolve=True)},
                     "stats": {"mean_image": d.stats.mean_image, "eigvals": d.stats.eigvals,
                               "eigvecs": d.stats.eigvecs}}, final)
        if not stopped_early:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
        metrics.close(plot=True)
        log.info("done: %s", json.dumps({k: summary[k] for k in ("val_top1_err", "val_top5_err", "seconds")}))
    comm.barrier()
    return summary
