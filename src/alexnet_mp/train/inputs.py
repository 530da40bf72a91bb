"""The inputs of a run (sec. 2 and 4.1): both splits as stored uint8 images with the
training set's statistics (``Data``, ``build_data``), and the batches made of them on the
device: random crops, flips and fancy PCA for training, centre crops for validation
(``Inputs``, ``build_augment``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from alexnet_mp import data
from alexnet_mp.parallel import ranks
from alexnet_mp.data import BatchAugment, base_datasets
from alexnet_mp.errors import UserError
from alexnet_mp.job.launcher import Launcher

__all__ = ["Data", "Inputs", "build_data", "build_augment"]


@dataclass
class Data:
    """Both splits as stored uint8 images, the training-set statistics and the crop size."""

    train: Any
    val: Any
    stats: data.DatasetStats
    num_classes: int
    image_size: int
    crop: int


def build_data(cfg: DictConfig, run_dir: Path, main: bool, launcher: Launcher | None = None) -> Data:
    """Both splits; the statistics come from the prepared dataset or from the main process's cache.
    ``launcher``: the job's notes (:func:`alexnet_mp.data.base_datasets`)."""
    dcfg = cfg.data
    train_base, val_base, root, stats = base_datasets(dcfg, launcher)
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
        outcome = ranks.broadcast_object(outcome if isinstance(outcome, data.DatasetStats) else str(outcome))
        if not isinstance(outcome, data.DatasetStats):
            raise UserError(outcome)
        stats = outcome
    return Data(train_base, val_base, stats, len(train_base.classes), int(dcfg.image_size), crop)


def build_augment(cfg: DictConfig, d: Data, device: torch.device | str, *, reuse_output: bool = False) -> BatchAugment:
    """The batch augmentation of ``cfg.data`` on ``device``, with the training set's statistics."""
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
                 shard: tuple[int, int] = (0, 1), tower_group=None):
        self.device = device
        self.tower_group = tower_group  # this replica's tower pair (debug.check_batches compares within it)
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
