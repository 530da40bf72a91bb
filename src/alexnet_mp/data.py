"""Images, dataset statistics and the paper's augmentations (Krizhevsky et al. 2012, sec. 5).

Stored images are S x S uint8 (the paper: shorter side rescaled to 256, central
256 x 256 kept). Training sees random crop x crop windows, their horizontal
reflections and "fancy PCA" colour noise; testing sees the centre crop or the ten
patches (four corners + centre, and their reflections). The per-pixel mean image of
the training set is subtracted from every input.

Every random draw comes from a ``torch.Generator`` seeded by a hash of
(seed, epoch, index), never from global or worker RNG, so both towers' processes,
any number of loader workers and a resumed run produce bit-identical batches
(sec. 7 of the project reference: both towers must see the same images).

    >>> ds = SyntheticImages("train", num_classes=10, size=2000, image_size=77, seed=0)
    >>> stats = load_or_compute_stats(ds, Path("runs/x/stats.pt"), max_samples=1000, seed=0)
    >>> tf = PaperTransform(stats, crop_size_for(77, "224"), train=True)
    >>> for images, labels, n_skipped in make_loader(TransformedDataset(ds, tf), 128,
    ...         shuffle=True, seed=0, epoch=0, workers=default_workers(), drop_last=True): ...
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from alexnet_mp.errors import UserError

__all__ = [
    "DatasetStats", "ImageFolderImages", "PaperTransform", "SyntheticImages",
    "TransformedDataset", "check_same_classes", "collate_skip_corrupt", "compute_stats",
    "crop_size_for", "default_workers", "epoch_order", "load_or_compute_stats", "make_loader",
    "ten_crop",
]

_log = logging.getLogger(__name__)

MIN_INPUT = 67  # the smallest input the net accepts (reference sec. 1)
_CROP_OF_256 = {"224": 224, "227": 227}  # cuda-convnet / Caffe crops of a 256 image
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_STATS_FORMAT = 1
_SYNTHETIC_VERSION = 1  # bump when the generator changes, so stats caches go stale
# Domain tags keep the streams of different consumers of one seed independent.
_TAG_AUGMENT, _TAG_ORDER, _TAG_LOADER, _TAG_CLASS, _TAG_IMAGE, _TAG_STATS = range(1, 7)
_M64 = (1 << 64) - 1


def _mix(*parts: int) -> int:
    """Hash integers into a 63-bit seed (splitmix64 finaliser applied per part)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        z = ((h ^ (int(p) & _M64)) + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h >> 1


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*parts))


def crop_size_for(image_size: int, geometry: str) -> int:
    """Crop side for stored images of side ``image_size``: 224 (cuda-convnet) or 227
    (Caffe) of 256, scaled proportionally for other stored sizes (sec. 5)."""
    if str(geometry) not in _CROP_OF_256:
        raise UserError(f"unknown crop geometry {geometry!r}; expected '224' or '227'")
    of_256 = _CROP_OF_256[str(geometry)]
    crop = round(image_size * of_256 / 256)
    if crop < MIN_INPUT:
        smallest = next(s for s in range(MIN_INPUT, 2 * MIN_INPUT) if round(s * of_256 / 256) >= MIN_INPUT)
        raise UserError(f"image_size {image_size} gives {crop}px crops; the net needs at "
                        f"least {MIN_INPUT}px (image_size >= {smallest} for geometry {geometry})")
    return crop


# ----------------------------------------------------------------------------- datasets

class SyntheticImages(Dataset):
    """Generated images with real class structure, deterministic from (seed, split, index).

    Class c has a base colour, a coloured blob at a preferred place and an oriented
    sinusoidal grating of its own orientation and frequency (independent of split and
    of ``num_classes``). Each image draws its own grating phase, small orientation and
    frequency jitter, blob jitter, brightness, colour cast and pixel noise, so classes
    overlap in raw pixels and a classifier has to find the grating.
    """

    def __init__(self, split: str, num_classes: int, size: int, image_size: int, seed: int):
        if split not in ("train", "val") or num_classes < 1 or size < 0 or image_size < 1:
            raise UserError(f"bad synthetic dataset: split={split!r} (train|val), "
                            f"num_classes={num_classes}, size={size}, image_size={image_size}")
        self.split, self.num_classes, self.size = split, num_classes, size
        self.image_size, self.seed = image_size, seed
        self.classes = [f"class_{c:02d}" for c in range(num_classes)]
        self._split_id = 1 if split == "train" else 2
        params = [self._class_params(c) for c in range(num_classes)]
        self._params = {k: torch.stack([p[k] for p in params]) for k in params[0]}
        lin = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
        self._yy, self._xx = torch.meshgrid(lin, lin, indexing="ij")

    def _class_params(self, c: int) -> dict[str, Tensor]:
        g = _generator(_TAG_CLASS, self.seed, c)
        u = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
        amp = u(3) * 2 - 1
        return {"base": 60 + 135 * u(3), "amp": 45 * amp / amp.norm().clamp_min(1e-6),
                "theta": math.pi * u(1), "freq": 1.5 + 4.5 * u(1),
                "blob": u(2) - 0.5, "radius": 0.15 + 0.2 * u(1), "blob_rgb": 100 * u(3) - 50}

    def fingerprint(self) -> str:
        return (f"synthetic-v{_SYNTHETIC_VERSION}|{self.split}|{self.num_classes}|{self.size}|"
                f"{self.image_size}|{self.seed}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        label = index % self.num_classes
        p = {k: v[label] for k, v in self._params.items()}
        g = _generator(_TAG_IMAGE, self.seed, self._split_id, index)
        r = torch.rand(7, generator=g)
        theta = p["theta"] + 0.08 * torch.randn(1, generator=g)
        freq = p["freq"] * torch.exp(0.08 * torch.randn(1, generator=g))
        proj = self._xx * torch.cos(theta) + self._yy * torch.sin(theta)
        grating = torch.sin(math.pi * freq * proj + 2 * math.pi * r[0])
        centre = p["blob"] + 0.15 * torch.randn(2, generator=g)
        d2 = (self._xx - centre[0]) ** 2 + (self._yy - centre[1]) ** 2
        blob = torch.exp(-d2 / (2 * p["radius"] ** 2))
        cast = 30 * torch.randn(3, generator=g)
        noise = 18 * torch.randn(3, self.image_size, self.image_size, generator=g)
        brightness = 0.7 + 0.6 * r[1]
        img = brightness * (p["base"][:, None, None] + p["amp"][:, None, None] * grating
                            + p["blob_rgb"][:, None, None] * blob) + cast[:, None, None] + noise
        return img.clamp_(0, 255).round_().to(torch.uint8), label


class ImageFolderImages(Dataset):
    """``root/split/<class>/*.jpg|png|...``: classes are the sorted folder names.

    Each image is converted to RGB, its shorter side resized to ``image_size``
    (bilinear, antialiased) and the central square kept (sec. 5). An unreadable file
    gives ``None`` and a warning naming it; :func:`collate_skip_corrupt` drops it.
    """

    def __init__(self, root: str | Path, split: str, image_size: int):
        self.root, self.split, self.image_size = Path(root), split, int(image_size)
        if not self.root.is_dir():
            raise UserError(f"data root {self.root} does not exist or is not a directory")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise UserError(f"split folder {split_dir} does not exist")
        self.classes = sorted(d.name for d in split_dir.iterdir()
                              if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise UserError(f"no class folders in {split_dir}")
        self.num_classes = len(self.classes)
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in (split_dir / name).iterdir()
                           if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            empty += [] if files else [name]
            self.samples += [(f, label) for f in files]
        if not self.samples:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the "
                            f"{len(self.classes)} class folders of {split_dir}")
        if empty:
            _log.warning("%d class folders of %s hold no images (first: %s)",
                         len(empty), split_dir, empty[0])

    def fingerprint(self) -> str:
        first, last = (p.relative_to(self.root).as_posix() for p in
                       (self.samples[0][0], self.samples[-1][0]))
        return f"folder|{self.split}|{self.num_classes}|{len(self.samples)}|{first}|{last}"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                rgb = _shorter_side_centre_crop(im, self.image_size)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
            return None
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous(), label


def _shorter_side_centre_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if im.format == "JPEG" and scale < 0.5:
        im.draft(im.mode, (2 * new_w, 2 * new_h))  # DCT-domain downscale; resize finishes it
    if im.mode == "P":  # palette transparency must go through RGBA to convert cleanly
        im = im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v * (1 / 256)).convert("L")  # 16-bit greyscale to 8 bits
    im = im.convert("RGB")  # L, LA, CMYK, RGBA, YCbCr...: alpha is dropped
    if im.size != (new_w, new_h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)  # PIL antialiases
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return im.crop((left, top, left + size, top + size))


def collate_skip_corrupt(batch: Sequence[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor, int]:
    """Stack (image, label) items, dropping ``None`` (unreadable) ones.

    Returns (images [B, ...], labels int64 [B], n_skipped). A batch of only corrupt
    items gives zero-length tensors; the caller skips such a step.
    """
    items = [b for b in batch if b is not None]
    n_skipped = len(batch) - len(items)
    if not items:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), n_skipped
    images = torch.stack([b[0] for b in items])
    return images, torch.tensor([b[1] for b in items], dtype=torch.int64), n_skipped


def check_same_classes(train_ds: Any, val_ds: Any) -> None:
    """Raise UserError unless both datasets have the same classes (hence the same labels)."""
    train, val = list(train_ds.classes), list(val_ds.classes)
    if train == val:
        return
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    show = lambda xs: ", ".join(xs[:5]) + (f", ... ({len(xs)} in all)" if len(xs) > 5 else "")  # noqa: E731
    raise UserError(f"train and val classes differ: missing from val: [{show(missing)}]; "
                    f"extra in val: [{show(extra)}]")


# ----------------------------------------------------------------------------- statistics

@dataclass
class DatasetStats:
    """Training-set statistics (sec. 5).

    ``mean_image``: per-pixel mean, float32 [3, S, S] in 0..255 pixel units.
    ``eigvals`` [3] (descending) and ``eigvecs`` [3, 3] (columns): eigen-decomposition of
    the 3 x 3 covariance of RGB pixel values scaled to [0, 1], the unit in which
    cuda-convnet2 states fancy PCA; :class:`PaperTransform` converts back to 0..255.
    """

    mean_image: Tensor
    eigvals: Tensor
    eigvecs: Tensor


def _fingerprint(dataset: Any) -> str:
    fp = getattr(dataset, "fingerprint", None)
    return fp() if callable(fp) else f"{type(dataset).__name__}|{len(dataset)}"


def _sample_indices(n: int, max_samples: int, seed: int) -> list[int]:
    if n <= max_samples:
        return list(range(n))
    perm = torch.randperm(n, generator=_generator(_TAG_STATS, seed))[:max_samples]
    return sorted(perm.tolist())  # sorted: files are read in folder order


def compute_stats(dataset: Any, max_samples: int, seed: int, *, progress: bool = True) -> DatasetStats:
    """Mean image and RGB covariance eigen-decomposition over a deterministic sample of
    ``dataset`` (all of it if it has at most ``max_samples`` items); corrupt items skipped."""
    indices = _sample_indices(len(dataset), max_samples, seed)
    total = s1 = s2 = None
    count = npix = 0
    for i in tqdm(indices, desc="dataset stats", disable=not progress or len(indices) <= 100):
        item = dataset[i]
        if item is None:
            continue
        img = item[0].to(torch.float64)
        total = img.clone() if total is None else total.add_(img)
        x = img.reshape(3, -1) / 255
        s1 = x.sum(1) if s1 is None else s1 + x.sum(1)
        s2 = x @ x.T if s2 is None else s2 + x @ x.T
        count, npix = count + 1, npix + x.shape[1]
    if count == 0:
        raise UserError(f"no readable images to compute dataset statistics from ({len(dataset)} items)")
    mu = s1 / npix
    eigvals, eigvecs = torch.linalg.eigh(s2 / npix - torch.outer(mu, mu))
    order = eigvals.argsort(descending=True)
    return DatasetStats((total / count).float(), eigvals[order].clamp_min(0).float(),
                        eigvecs[:, order].float().contiguous())


def load_or_compute_stats(dataset: Any, cache_path: Path, max_samples: int, seed: int, *,
                          progress: bool = True) -> DatasetStats:
    """:func:`compute_stats`, cached in ``cache_path`` (reused only if it was computed
    from the same dataset, image size, sample count and seed; written atomically).
    An unwritable cache location is logged and otherwise ignored."""
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
    blob = {**meta, "mean_image": stats.mean_image, "eigvals": stats.eigvals,
            "eigvecs": stats.eigvecs}
    try:
        _atomic_save(blob, cache_path)
    except OSError as e:
        _log.warning("cannot write stats cache %s (%s); continuing without it", cache_path, e)
    return stats


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- transforms

def ten_crop(img: Tensor, crop: int) -> Tensor:
    """The ten test patches of sec. 5: top-left, top-right, bottom-left, bottom-right and
    centre crops of ``img`` [3, H, W], then their horizontal reflections -> [10, 3, crop, crop]."""
    h, w = img.shape[-2:]
    if crop > min(h, w):
        raise UserError(f"crop {crop} is larger than the {h}x{w} image")
    offsets = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop),
               ((h - crop) // 2, (w - crop) // 2)]
    five = torch.stack([img[..., t:t + crop, l:l + crop] for t, l in offsets])
    return torch.cat([five, five.flip(-1)])


class PaperTransform:
    """Sec. 5 input pipeline on a uint8 [3, S, S] image -> float32 [3, crop, crop].

    Pixels stay in 0..255 and the mean image is subtracted (when ``stats`` is given).
    ``train``: uniformly random crop window, reflection with probability 1/2 (``flip``)
    and fancy PCA noise ``eigvecs @ (alpha * w) * 255`` added to every pixel, with
    alpha_i ~ N(0, pca_sigma) and w = sqrt(eigvals) (``"sqrt"``, cuda-convnet2) or
    eigvals (``"eigenvalue"``, the paper as printed). Otherwise: the centre crop.
    """

    def __init__(self, stats: DatasetStats | None, crop: int, train: bool, flip: bool = True,
                 pca_sigma: float = 0.1, pca_scale: str = "sqrt", seed: int = 0):
        if pca_scale not in ("sqrt", "eigenvalue"):
            raise UserError(f"pca_scale must be 'sqrt' or 'eigenvalue', not {pca_scale!r}")
        if train and pca_sigma > 0 and stats is None:
            raise ValueError("fancy PCA needs dataset stats; pass stats or pca_sigma=0")
        self.crop, self.train, self.flip = int(crop), bool(train), bool(flip)
        self.pca_sigma, self.pca_scale, self.seed = float(pca_sigma), pca_scale, int(seed)
        self.mean = None if stats is None else stats.mean_image.detach().float().cpu()
        self._pca_w = self._pca_basis = None
        if stats is not None:
            ev = stats.eigvals.detach().double().cpu().clamp_min(0)
            self._pca_w = ev.sqrt() if pca_scale == "sqrt" else ev
            self._pca_basis = stats.eigvecs.detach().double().cpu()

    def draw(self, index: int, epoch: int, image_size: int | None = None
             ) -> tuple[int, int, bool, Tensor]:
        """The random choices for sample ``index`` in ``epoch``: (top, left, flip, alpha)."""
        size = image_size or (None if self.mean is None else self.mean.shape[-1])
        if size is None:
            raise ValueError("draw() needs image_size when the transform has no stats")
        if self.crop > size:
            raise UserError(f"crop {self.crop} is larger than the {size}px stored images")
        if not self.train:
            c = (size - self.crop) // 2
            return c, c, False, torch.zeros(3)
        g = _generator(_TAG_AUGMENT, self.seed, epoch, index)
        top, left = torch.randint(0, size - self.crop + 1, (2,), generator=g).tolist()
        flip = bool(torch.rand(1, generator=g) < 0.5)  # drawn even when off: crops stay put
        alpha = torch.randn(3, generator=g) * self.pca_sigma
        return top, left, flip and self.flip, alpha

    def _subtract_mean(self, img: Tensor, window: tuple[slice, slice] = (slice(None),) * 2) -> Tensor:
        x = img[..., window[0], window[1]].float()
        if self.mean is not None:
            if self.mean.shape != img.shape:
                raise UserError(f"mean image is {tuple(self.mean.shape)} but images are "
                                f"{tuple(img.shape)}; stats computed for another image_size?")
            x = x - self.mean[..., window[0], window[1]]
        return x

    def __call__(self, img: Tensor, index: int, epoch: int) -> Tensor:
        top, left, flip, alpha = self.draw(index, epoch, img.shape[-1])
        x = self._subtract_mean(img, (slice(top, top + self.crop), slice(left, left + self.crop)))
        if flip:
            x = x.flip(-1)
        if self.train and self.pca_sigma > 0:  # fancy PCA, converted from [0, 1] to pixel units
            x = x + (self._pca_basis @ (alpha.double() * self._pca_w) * 255).float()[:, None, None]
        return x.contiguous()

    def test_ten_crop(self, img: Tensor) -> Tensor:
        """Mean-subtracted ten-crop of a uint8 [3, S, S] image -> [10, 3, crop, crop]."""
        return ten_crop(self._subtract_mean(img), self.crop)


# ----------------------------------------------------------------------------- loading

class TransformedDataset(Dataset):
    """``base[i]`` through ``transform`` at the current ``epoch``; ``None`` stays ``None``.
    With ``ten_crop=True`` items are the [10, 3, crop, crop] test patches."""

    def __init__(self, base: Any, transform: PaperTransform, *, ten_crop: bool = False):
        self.base, self.transform, self.ten_crop, self.epoch = base, transform, ten_crop, 0
        self.classes = base.classes
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        item = self.base[index]
        if item is None:
            return None
        img, label = item
        if self.ten_crop:
            return self.transform.test_ten_crop(img), label
        return self.transform(img, index, self.epoch), label


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> Tensor:
    """Sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=_generator(_TAG_ORDER, seed, epoch))


def _worker_context() -> str:
    # Workers only decode and crop on the CPU, so forking after CUDA / torch.distributed
    # initialisation is safe (they never touch CUDA or the process group) and avoids
    # re-importing torch per worker each epoch. "spawn" where fork does not exist.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def make_loader(dataset: TransformedDataset, batch_size: int, *, shuffle: bool, seed: int,
                epoch: int, start_batch: int = 0, workers: int, drop_last: bool,
                pin_memory: bool = False) -> DataLoader:
    """Batches of ``epoch``, from batch ``start_batch`` on: (images, labels, n_skipped).

    Batch k holds ``epoch_order(...)[k * batch_size:(k + 1) * batch_size]``; skipped
    batches are never loaded. ``len()`` is the number of batches still to come.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, not {batch_size}")
    order = epoch_order(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch).tolist()
    n_batches = len(order) // batch_size if drop_last else math.ceil(len(order) / batch_size)
    if not 0 <= start_batch <= n_batches:
        raise ValueError(f"start_batch {start_batch} outside 0..{n_batches}")
    batches = [order[k * batch_size:(k + 1) * batch_size] for k in range(start_batch, n_batches)]
    dataset.epoch = epoch
    return DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_skip_corrupt, num_workers=workers,
        multiprocessing_context=_worker_context() if workers > 0 else None,
        persistent_workers=False, pin_memory=pin_memory,
        # A private generator: iterating must not consume the global RNG (dropout).
        generator=_generator(_TAG_LOADER, seed, epoch))


def default_workers() -> int:
    """Loader workers per training process: the cores left over after one per process
    on this node (torchrun's LOCAL_WORLD_SIZE), shared out, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(4, max(0, (cpus - procs) // procs))
