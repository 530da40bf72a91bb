"""Training-set statistics: the mean image and the RGB eigen-decomposition (Krizhevsky et al. 2012, sec. 2, 4.1).

Sec. 2 subtracts "the mean activity over the training set from each pixel"; sec. 4.1's
fancy PCA adds multiples of the principal components of the RGB pixel values. Both are
sums over training images, kept in float64 by :class:`StatsSums`: :func:`compute_stats`
sums a deterministic sample in one process, the prepare (:mod:`alexnet_mp.data.prepare`)
sums every image, a shard per worker, and :func:`stats_from_sums` turns either into
:class:`DatasetStats` with the same arithmetic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from alexnet_mp.data.seeds import TAG_STATS, generator
from alexnet_mp.errors import UserError
from alexnet_mp.io import DiskFull, atomic_save

__all__ = ["DatasetStats", "StatsSums", "compute_stats", "load_or_compute_stats", "stats_from_sums"]

_log = logging.getLogger("alexnet_mp.data")

_STATS_FORMAT = 2  # 2: images decoded and resized by torchvision (caches of PIL's pixels go stale)


@dataclass
class DatasetStats:
    """Training-set statistics (sec. 5).

    ``mean_image``: per-pixel mean, float32 [3, S, S] in 0..255 pixel units.
    ``eigvals`` [3] (descending) and ``eigvecs`` [3, 3] (columns): eigen-decomposition of
    the 3 x 3 covariance of RGB pixel values scaled to [0, 1], the unit in which
    cuda-convnet2 states fancy PCA; :func:`alexnet_mp.data.augment.pca_shift` converts
    back to 0..255.
    """

    mean_image: Tensor
    eigvals: Tensor
    eigvecs: Tensor


class StatsSums:
    """Float64 sums over readable images: their sum, and the first and second moments of
    their RGB values in [0, 1]."""

    def __init__(self, size: int):
        self.total = torch.zeros(3, size, size, dtype=torch.float64)
        self.s1 = torch.zeros(3, dtype=torch.float64)
        self.s2 = torch.zeros(3, 3, dtype=torch.float64)
        self.count = self.npix = 0

    def add(self, img: Tensor) -> None:
        img = img.to(torch.float64)
        self.total.add_(img)
        x = img.reshape(3, -1) / 255
        self.s1 += x.sum(1)
        self.s2 += x @ x.T
        self.count, self.npix = self.count + 1, self.npix + x.shape[1]

    def state(self) -> dict:
        """The sums as plain tensors and numbers (what a prepared shard's record keeps)."""
        return {"sum": self.total, "count": self.count, "s1": self.s1, "s2": self.s2, "npix": self.npix}


def stats_from_sums(parts: list[dict]) -> DatasetStats | None:
    """The statistics of the images behind the :meth:`StatsSums.state` ``parts`` (None if none)."""
    parts = [p for p in parts if p["count"] > 0]
    if not parts:
        return None
    total = torch.stack([p["sum"] for p in parts]).sum(0)
    s1 = torch.stack([p["s1"] for p in parts]).sum(0)
    s2 = torch.stack([p["s2"] for p in parts]).sum(0)
    count, npix = sum(p["count"] for p in parts), sum(p["npix"] for p in parts)
    # Covariance of RGB in [0, 1]; eigenvalues descending and >= 0.
    mu = s1 / npix
    eigvals, eigvecs = torch.linalg.eigh(s2 / npix - torch.outer(mu, mu))
    order = eigvals.argsort(descending=True)
    return DatasetStats((total / count).float(), eigvals[order].clamp_min(0).float(),
                        eigvecs[:, order].float().contiguous())


def _fingerprint(dataset: Any) -> str:
    fp = getattr(dataset, "fingerprint", None)
    return fp() if callable(fp) else f"{type(dataset).__name__}|{len(dataset)}"


def _sample_indices(n: int, max_samples: int, seed: int) -> list[int]:
    if n <= max_samples:
        return list(range(n))
    perm = torch.randperm(n, generator=generator(TAG_STATS, seed))[:max_samples]
    return sorted(perm.tolist())  # sorted: files are read in folder order


def compute_stats(dataset: Any, max_samples: int, seed: int, *, progress: bool = True) -> DatasetStats:
    """Mean image and RGB covariance eigen-decomposition over a deterministic sample of
    ``dataset`` (all of it if it has at most ``max_samples`` items); corrupt items skipped."""
    indices = _sample_indices(len(dataset), max_samples, seed)
    sums = None
    for i in tqdm(indices, desc="dataset stats", disable=not progress or len(indices) <= 100):
        item = dataset[i]
        if item is None:
            continue
        sums = sums or StatsSums(item[0].shape[-1])
        sums.add(item[0])
    stats = stats_from_sums([sums.state()] if sums is not None else [])
    if stats is None:
        raise UserError(f"no readable images to compute dataset statistics from ({len(dataset)} items)")
    return stats


def load_or_compute_stats(dataset: Any, cache_path: Path, max_samples: int, seed: int, *,
                          progress: bool = True) -> DatasetStats:
    """:func:`compute_stats`, cached in ``cache_path`` (reused only if it was computed
    from the same dataset, image size, sample count and seed; written atomically).
    An unwritable cache location, or a full disk, is logged and otherwise ignored."""
    cache_path = Path(cache_path)
    meta = {"format": _STATS_FORMAT, "fingerprint": _fingerprint(dataset),
            "image_size": int(getattr(dataset, "image_size", -1)),
            "num_samples": min(len(dataset), max_samples), "seed": int(seed)}
    if cache_path.is_file():
        try:
            blob = torch.load(cache_path, map_location="cpu", weights_only=True)
            if all(blob.get(k) == v for k, v in meta.items()):
                return DatasetStats(blob["mean_image"], blob["eigvals"], blob["eigvecs"])
            _log.info("stats cache %s is for other data; recomputing", cache_path)
        except Exception as e:  # a truncated or foreign file: recompute and overwrite it
            _log.warning("unreadable stats cache %s (%s); recomputing", cache_path, e)
    stats = compute_stats(dataset, max_samples, seed, progress=progress)
    blob = {**meta, "mean_image": stats.mean_image, "eigvals": stats.eigvals, "eigvecs": stats.eigvecs}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(blob, cache_path)
    except (OSError, DiskFull) as e:  # the statistics are in hand; the cache only saves time later
        _log.warning("cannot write stats cache %s (%s); continuing without it", cache_path, e)
    return stats
