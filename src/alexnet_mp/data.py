"""Images, dataset statistics and the paper's augmentations (Krizhevsky et al. 2012, sec. 5).

Stored images are S x S uint8 (the paper: shorter side rescaled to 256, central
256 x 256 kept). Training sees random crop x crop windows, their horizontal
reflections and "fancy PCA" colour noise; testing sees the centre crop or the ten
patches (four corners + centre, and their reflections). The per-pixel mean image of
the training set is subtracted from every input.

Per-image work is reading (and decoding) the stored uint8 image; the loader hands
over whole uint8 batches, and the augmentation runs per batch on the training device
(:mod:`alexnet_mp.augment`). Every random draw is a function of (seed, epoch, index),
never of global or worker RNG, so both towers' processes, any number of loader
workers and a resumed run produce bit-identical batches (sec. 7 of the project
reference: both towers must see the same images).

    >>> ds = SyntheticImages("train", num_classes=10, size=2000, image_size=77, seed=0)
    >>> stats = load_or_compute_stats(ds, Path("runs/x/stats.pt"), max_samples=1000, seed=0)
    >>> loader = BatchLoader(ds, 128, shuffle=True, seed=0, workers=default_workers(), drop_last=True)
    >>> augment = BatchAugment(stats, crop_size_for(77, "224"), seed=0, device=device)
    >>> for batch in loader.epoch(0):
    ...     x = augment.train(batch.images.to(device), batch.indices, batch.epoch)
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from alexnet_mp.errors import UserError

__all__ = [
    "Batch", "BatchLoader", "BatchReader", "DatasetStats", "Draws", "EpochBatches", "ImageFolderImages",
    "PaperTransform", "SyntheticImages", "check_same_classes", "compute_stats", "crop_size_for",
    "default_workers", "draw_augmentations", "epoch_order", "load_image", "load_or_compute_stats",
    "pca_shift", "pca_weights", "read_images", "shorter_side_centre_crop", "ten_crop",
]

_log = logging.getLogger(__name__)

MIN_INPUT = 67  # the smallest input the net accepts (reference sec. 1)
_CROP_OF_256 = {"224": 224, "227": 227}  # cuda-convnet / Caffe crops of a 256 image
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_STATS_FORMAT = 2  # 2: images decoded and resized by torchvision (caches of PIL's pixels go stale)
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
    gives ``None`` and a warning naming it; :func:`read_images` drops it.
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
        img = load_image(path, self.image_size)
        return None if img is None else (img, label)


def _decode(encoded: bytes) -> Tensor:
    """uint8 RGB [3, H, W] from an encoded image file's bytes.

    torchvision's libjpeg-turbo/libpng decoders first: on real ImageNet photographs they
    decode and resize 2.4x faster than PIL here (420 against 172 images/s per core,
    ``make bench-data``). torchvision 0.29 deprecates them in favour of TorchCodec, which
    the GPU machine's torch 2.11 stack lacks; PIL takes every format they refuse
    (BMP, TIFF, PPM, 16-bit PNG...).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image

            img = decode_image(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if img.dtype == torch.uint8 and img.dim() == 3:
            return img
    except RuntimeError:
        pass  # a format or a variant torchvision does not read: PIL decides
    with Image.open(io.BytesIO(encoded)) as im:
        if im.mode == "P":  # palette transparency must go through RGBA to convert cleanly
            im = im.convert("RGBA")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = im.point(lambda v: v * (1 / 256)).convert("L")  # 16-bit greyscale to 8 bits
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)  # L, LA, CMYK, RGBA, YCbCr: alpha dropped
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def shorter_side_centre_crop(img: Tensor, size: int) -> Tensor:
    """Sec. 2: rescale uint8 [3, H, W] so the shorter side is ``size`` (bilinear,
    antialiased), then keep the central ``size`` x ``size`` square."""
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    scale = size / min(w, h)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        img = TF.resize(img, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img[:, top:top + size, left:left + size].contiguous()


def load_image(path: str | Path, size: int) -> Tensor | None:
    """The paper's preprocessing of one file (sec. 2): uint8 RGB [3, size, size], or
    ``None`` with a warning naming the file when it cannot be read."""
    try:
        img = _decode(Path(path).read_bytes())
        if min(img.shape[-2:]) < 1:
            raise ValueError("empty image")
        return shorter_side_centre_crop(img, size)
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError, Image.DecompressionBombError) as e:
        warnings.warn(f"skipping unreadable image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                      stacklevel=2)
        return None


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


@dataclass
class Draws:
    """The random choices of sec. 4.1 for a batch: crop window ``top``/``left`` [B] int64,
    reflection ``flip`` [B] bool and fancy-PCA ``alpha`` [B, 3] float64 (all on the CPU)."""

    top: Tensor
    left: Tensor
    flip: Tensor
    alpha: Tensor


_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for int64 ``x`` in [0, 2**32): split ``c`` in 16-bit halves so no
    product leaves int64, whatever the device."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(x: Tensor) -> Tensor:
    # A 32-bit integer finaliser (xorshift-multiply, "lowbias32"): every output bit depends
    # on every input bit, so neighbouring indices give unrelated draws.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _uniforms(key: int, indices: Tensor, count: int) -> Tensor:
    """``count`` uniform numbers in [0, 1) per index: a counter-based generator keyed by
    ``key`` (a hash of seed and epoch) and the sample index. Unlike a torch.Generator per
    image (54 us each here) a whole batch costs one vectorised pass, and the numbers do not
    depend on how indices are grouped into batches or processes."""
    k0, k1 = key & _M32, (key >> 32) & _M32
    idx = indices.to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > _M32):
        raise ValueError("sample indices must lie in [0, 2**32)")
    base = _hash32(_hash32(idx ^ k0) ^ k1)
    counters = torch.arange(count, dtype=torch.int64) * 0x9E3779B9
    h = _hash32(_hash32((base[:, None] + counters) & _M32) ^ k0)
    return (h >> 8).to(torch.float64) / float(1 << 24)


def draw_augmentations(seed: int, epoch: int, indices: Tensor, *, image_size: int, crop: int, train: bool,
                       flip: bool = True, pca_sigma: float = 0.1) -> Draws:
    """Sec. 4.1's random choices for samples ``indices`` in ``epoch``: a function of
    (seed, epoch, index) only, so both towers, any worker count, a resumed run, the
    per-image and the per-batch paths all draw the same numbers. Evaluation: the centre."""
    if crop > image_size:
        raise UserError(f"crop {crop} is larger than the {image_size}px stored images")
    n = len(indices)
    if not train:
        c = torch.full((n,), (image_size - crop) // 2, dtype=torch.int64)
        return Draws(c, c.clone(), torch.zeros(n, dtype=torch.bool), torch.zeros(n, 3, dtype=torch.float64))
    u = _uniforms(_mix(_TAG_AUGMENT, seed, epoch), indices, 7)
    positions = image_size - crop + 1
    top = (u[:, 0] * positions).to(torch.int64).clamp_(max=positions - 1)
    left = (u[:, 1] * positions).to(torch.int64).clamp_(max=positions - 1)
    flips = (u[:, 2] < 0.5) & flip  # drawn even when off: crops stay put
    # Box-Muller: three N(0, 1) from two pairs of uniforms; 1 - u lies in (0, 1].
    r1, r2 = (-2 * torch.log1p(-u[:, 3])).sqrt(), (-2 * torch.log1p(-u[:, 5])).sqrt()
    t1, t2 = 2 * math.pi * u[:, 4], 2 * math.pi * u[:, 6]
    alpha = torch.stack([r1 * torch.cos(t1), r1 * torch.sin(t1), r2 * torch.cos(t2)], dim=1) * pca_sigma
    return Draws(top, left, flips, alpha)


def pca_weights(stats: DatasetStats, pca_scale: str) -> tuple[Tensor, Tensor]:
    """(per-component weights, eigenvector basis) in float64 for :func:`pca_shift`:
    sqrt(eigenvalues) (cuda-convnet2) or the eigenvalues (the paper as printed)."""
    if pca_scale not in ("sqrt", "eigenvalue"):
        raise UserError(f"pca_scale must be 'sqrt' or 'eigenvalue', not {pca_scale!r}")
    ev = stats.eigvals.detach().double().cpu().clamp_min(0)
    return (ev.sqrt() if pca_scale == "sqrt" else ev), stats.eigvecs.detach().double().cpu()


def pca_shift(alpha: Tensor, weights: Tensor, basis: Tensor) -> Tensor:
    """Fancy PCA's colour shift per image, float32 [B, 3] in pixel units (sec. 4.1):
    ``basis @ (alpha * weights) * 255``, the statistics being in [0, 1] units. Written as
    three explicit terms so every path and batch size rounds identically."""
    aw = alpha.double() * weights
    shift = basis[:, 0] * aw[:, 0:1] + basis[:, 1] * aw[:, 1:2] + basis[:, 2] * aw[:, 2:3]
    return (shift * 255).float()


class PaperTransform:
    """Sec. 4.1 on ONE uint8 [3, S, S] image -> float32 [3, crop, crop]: the per-image
    reference for :class:`alexnet_mp.augment.BatchAugment`, which does the same per batch
    on the training device (the tests hold the two equal).

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
            self._pca_w, self._pca_basis = pca_weights(stats, pca_scale)

    def draw(self, index: int, epoch: int, image_size: int | None = None
             ) -> tuple[int, int, bool, Tensor]:
        """The random choices for sample ``index`` in ``epoch``: (top, left, flip, alpha)."""
        size = image_size or (None if self.mean is None else self.mean.shape[-1])
        if size is None:
            raise ValueError("draw() needs image_size when the transform has no stats")
        d = draw_augmentations(self.seed, epoch, torch.tensor([index]), image_size=size, crop=self.crop,
                               train=self.train, flip=self.flip, pca_sigma=self.pca_sigma)
        return int(d.top[0]), int(d.left[0]), bool(d.flip[0]), d.alpha[0].float()

    def _subtract_mean(self, img: Tensor, window: tuple[slice, slice] = (slice(None),) * 2) -> Tensor:
        x = img[..., window[0], window[1]].float()
        if self.mean is not None:
            if self.mean.shape != img.shape:
                raise UserError(f"mean image is {tuple(self.mean.shape)} but images are "
                                f"{tuple(img.shape)}; stats computed for another image_size?")
            x = x - self.mean[..., window[0], window[1]]
        return x

    def __call__(self, img: Tensor, index: int, epoch: int) -> Tensor:
        size = img.shape[-1]
        d = draw_augmentations(self.seed, epoch, torch.tensor([index]), image_size=size, crop=self.crop,
                               train=self.train, flip=self.flip, pca_sigma=self.pca_sigma)
        top, left = int(d.top[0]), int(d.left[0])
        x = self._subtract_mean(img, (slice(top, top + self.crop), slice(left, left + self.crop)))
        if bool(d.flip[0]):
            x = x.flip(-1)
        if self.train and self.pca_sigma > 0:  # fancy PCA, converted from [0, 1] to pixel units
            x = x + pca_shift(d.alpha, self._pca_w, self._pca_basis)[0][:, None, None]
        return x.contiguous()

    def test_ten_crop(self, img: Tensor) -> Tensor:
        """Mean-subtracted ten-crop of a uint8 [3, S, S] image -> [10, 3, crop, crop]."""
        return ten_crop(self._subtract_mean(img), self.crop)


# ----------------------------------------------------------------------------- loading

@dataclass
class Batch:
    """What the loader hands the training loop: stored uint8 images [n, 3, S, S] (or the
    float crops when ``data.augment=workers`` augmented them already), labels [n],
    the dataset indices [n] the augmentation draws are keyed by, the epoch, and how many
    unreadable images the batch dropped."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    epoch: int
    skipped: int = 0

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices, self.epoch, self.skipped)

    def __len__(self) -> int:
        return len(self.labels)


def read_images(base: Any, indices: list[int]) -> tuple[Tensor, Tensor, list[int]]:
    """(uint8 images [n, 3, S, S], labels [n], the indices read) of ``indices``, dropping
    unreadable ones. A dataset with ``read_batch`` (a prepared dataset) reads the whole
    batch at once; others are read image by image."""
    if hasattr(base, "read_batch"):
        images, labels = base.read_batch(indices)
        return images, labels, list(indices)
    items = [(i, base[i]) for i in indices]
    good = [(i, item) for i, item in items if item is not None]
    if not good:
        size = int(getattr(base, "image_size", 0))
        return (torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), [])
    images = torch.stack([item[0] for _, item in good])
    return images, torch.tensor([item[1] for _, item in good], dtype=torch.int64), [i for i, _ in good]


class BatchReader(Dataset):
    """Map-style dataset whose keys are whole batches, ``(epoch, [indices])``.

    Per-image work is reading bytes (and decoding, for image folders); everything else
    happens per batch: on the training device by default, or here, in the loader
    workers, when ``transform`` is given (``data.augment=workers``). The epoch travels
    with the key because persistent workers keep their own copy of this object.
    """

    def __init__(self, base: Any, transform=None):
        self.base, self.transform = base, transform
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, list[int]]) -> Batch:
        epoch, indices = key
        images, labels, read = read_images(self.base, indices)
        idx = torch.tensor(read, dtype=torch.int64)
        if self.transform is not None and len(read):
            images = self.transform(images, idx, epoch)
        return Batch(images, labels, idx, epoch, len(indices) - len(read))


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> Tensor:
    """Sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=_generator(_TAG_ORDER, seed, epoch))


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch as ``(epoch, [indices])`` keys, from ``start_batch`` on:
    batch k holds ``epoch_order(...)[k * batch_size:(k + 1) * batch_size]``. Set the epoch
    before each pass; the loader iterates it in the main process.

    ``shard=(i, n)``: this replica's rows of every batch, the i-th of n near-equal slices
    (equal when n divides the batch): ``batch_size`` stays the global batch."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool,
                 shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch, self.start_batch = 0, 0
        self.shard = shard

    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch():
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch()}")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        order = epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch).tolist()
        b = self.batch_size
        i, n = self.shard
        for k in range(self.start_batch, self.batches_per_epoch()):
            rows = order[k * b:(k + 1) * b]
            yield self.epoch, rows[len(rows) * i // n:len(rows) * (i + 1) // n]


def _worker_context() -> str:
    # Workers only read, decode and (data.augment=workers) augment on the CPU, so forking
    # after CUDA / torch.distributed initialisation is safe (they never touch CUDA or the
    # process group) and avoids re-importing torch per worker. "spawn" where fork does not exist.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class BatchLoader:
    """Batches of ``base`` for any epoch, through one DataLoader whose workers live as long
    as the loader (forked once, not every epoch and every evaluation), with prefetching and
    pinned memory for a GPU.

        loader = BatchLoader(ds, 128, shuffle=True, seed=0, workers=4, drop_last=True)
        for batch in loader.epoch(3, start_batch=10): ...
    """

    def __init__(self, base: Any, batch_size: int, *, shuffle: bool, seed: int, workers: int, drop_last: bool,
                 pin_memory: bool = False, transform=None, prefetch: int = 4, shard: tuple[int, int] = (0, 1)):
        self.reader = BatchReader(base, transform)
        self.sampler = EpochBatches(len(base), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                    shard=shard)
        self.batch_size, self.workers = batch_size, workers
        self.loader = DataLoader(
            self.reader, sampler=self.sampler, batch_size=None, num_workers=workers,
            multiprocessing_context=_worker_context() if workers > 0 else None,
            persistent_workers=workers > 0, pin_memory=pin_memory,
            prefetch_factor=prefetch if workers > 0 else None,
            # A private generator: starting the workers must not consume the global RNG (dropout).
            generator=_generator(_TAG_LOADER, seed))

    def epoch(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """The batches of ``epoch`` from ``start_batch`` on; ``len()`` is how many remain."""
        self.sampler.set_epoch(epoch, start_batch)
        return self.loader

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()


def default_workers() -> int:
    """Loader workers per training process: the cores left over after one per process
    on this node (torchrun's LOCAL_WORLD_SIZE), shared out, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(4, max(0, (cpus - procs) // procs))
