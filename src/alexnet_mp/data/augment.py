"""The paper's augmentations: the random draws and their application per batch (Krizhevsky et al. 2012, sec. 4.1, 5).

The paper preprocessed once and augmented on the fly while the GPUs trained. Here the
loader hands over stored uint8 images [B, 3, S, S]; :class:`BatchAugment` turns them
into the net's float input where the net runs: random crop windows, horizontal
reflections, mean-image subtraction and fancy-PCA colour noise for training (sec. 4.1),
the centre crop or the ten patches for testing (sec. 5). The random choices come from
:func:`draw_augmentations`, a counter-based generator keyed by (seed, epoch, index), so
the result equals the per-image reference (``benchmarks/data/per_image.py``, bit for bit, tested)
on every device, batch size and worker count.

    augment = BatchAugment(stats, crop_size_for(256, "224"), seed=0, device=torch.device("cuda", 0))
    x = augment.train(batch.images.to(device, non_blocking=True), batch.indices, batch.epoch)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from alexnet_mp.net.arch import GEOMETRIES, MIN_INPUT_SIZE
from alexnet_mp.data.seeds import TAG_AUGMENT, mix
from alexnet_mp.data.dataset_stats import DatasetStats
from alexnet_mp.errors import UserError

__all__ = ["BatchAugment", "Draws", "crop_size_for", "draw_augmentations", "pca_shift", "pca_weights", "ten_crop"]


def crop_size_for(image_size: int, geometry: str) -> int:
    """Crop side for stored images of side ``image_size``: 224 (cuda-convnet) or 227
    (Caffe) of 256, scaled proportionally for other stored sizes (sec. 5)."""
    if str(geometry) not in GEOMETRIES:
        raise UserError(f"unknown crop geometry {geometry!r}; expected '224' or '227'")
    of_256 = int(geometry)  # the geometry is named by its crop of a 256 image
    crop = round(image_size * of_256 / 256)
    if crop < MIN_INPUT_SIZE:
        smallest = next(s for s in range(MIN_INPUT_SIZE, 2 * MIN_INPUT_SIZE)
                        if round(s * of_256 / 256) >= MIN_INPUT_SIZE)
        raise UserError(f"image_size {image_size} gives {crop}px crops; the net needs at "
                        f"least {MIN_INPUT_SIZE}px (image_size >= {smallest} for geometry {geometry})")
    return crop


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
    image, a whole batch costs one vectorised pass (docs/data.md), and the numbers do not
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
    u = _uniforms(mix(TAG_AUGMENT, seed, epoch), indices, 7)
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


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # Pinned first, so the copy is queued on the stream and the host never waits for it.
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


class BatchAugment:
    """Sec. 4.1 on a batch of uint8 [B, 3, S, S] images on ``device`` -> float32 [B, 3, crop, crop].

    ``stats`` gives the mean image (subtracted when ``mean_subtraction``) and the RGB
    eigen-decomposition for fancy PCA (``pca_sigma`` 0 turns it off; ``pca_scale`` is
    ``"sqrt"`` or ``"eigenvalue"``, see :func:`pca_weights`).

    ``reuse_output`` (CPU only): :meth:`train` writes every batch into the same buffer, so
    the tensor it returns is overwritten by the next call. A fresh buffer per batch costs
    more in page faults than the crops themselves (docs/data.md); the trainer uses each
    batch before it asks for the next.
    """

    def __init__(self, stats: DatasetStats, crop: int, *, seed: int, device: torch.device | str = "cpu",
                 flip: bool = True, pca_sigma: float = 0.1, pca_scale: str = "sqrt",
                 mean_subtraction: bool = True, reuse_output: bool = False):
        self.device = torch.device(device)
        self.reuse_output, self._out = reuse_output, None
        self.crop, self.seed, self.flip, self.pca_sigma = int(crop), int(seed), bool(flip), float(pca_sigma)
        mean = stats.mean_image.detach().float()
        if not mean_subtraction:
            mean = torch.zeros_like(mean)
        self.image_size = int(mean.shape[-1])
        if self.crop > self.image_size:
            raise UserError(f"crop {self.crop} is larger than the {self.image_size}px stored images")
        self.mean = mean.to(self.device).contiguous()
        self.mean_flipped = self.mean.flip(-1).contiguous()  # reflections read a mirrored window of it
        self.pca_w, self.pca_basis = pca_weights(stats, pca_scale)

    # -- the three inputs the net sees --------------------------------------------------------
    def train(self, images: Tensor, indices: Tensor, epoch: int) -> Tensor:
        """Random crop, reflection, mean subtraction and fancy PCA for samples ``indices`` of ``epoch``."""
        self._check(images)
        d = draw_augmentations(self.seed, epoch, indices.cpu(), image_size=self.image_size, crop=self.crop,
                               train=True, flip=self.flip, pca_sigma=self.pca_sigma)
        shift = pca_shift(d.alpha, self.pca_w, self.pca_basis) if self.pca_sigma > 0 else None
        return self._crops(images, d.top, d.left, d.flip, shift)

    def centre(self, images: Tensor) -> Tensor:
        """The mean-subtracted centre crop (validation during training)."""
        self._check(images)
        c = (self.image_size - self.crop) // 2
        return images[:, :, c:c + self.crop, c:c + self.crop].float() - self.mean[:, c:c + self.crop, c:c + self.crop]

    def ten_crop(self, images: Tensor) -> Tensor:
        """Sec. 5 "Test": the four corner patches and the centre patch and their reflections,
        mean-subtracted -> [B, 10, 3, crop, crop] (order as :func:`ten_crop`)."""
        self._check(images)
        x = images.float() - self.mean
        s, c = self.image_size, self.crop
        offsets = [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)]
        five = torch.stack([x[:, :, t:t + c, l:l + c] for t, l in offsets], dim=1)
        return torch.cat([five, five.flip(-1)], dim=1)

    # -- how ---------------------------------------------------------------------------------
    def _check(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, self.image_size,
                                                                                            self.image_size):
            raise UserError(f"expected uint8 images [batch, 3, {self.image_size}, {self.image_size}], got "
                            f"{images.dtype} {list(images.shape)}; stats computed for another image_size?")

    def _crops(self, images: Tensor, top: Tensor, left: Tensor, flip: Tensor, shift: Tensor | None) -> Tensor:
        if images.device.type == "cpu":
            return self._crops_by_slices(images, top, left, flip, shift)
        return self._crops_by_gather(images, top, left, flip, shift)

    def _crops_by_slices(self, images: Tensor, top: Tensor, left: Tensor, flip: Tensor,
                         shift: Tensor | None) -> Tensor:
        # On a CPU one pass per image over its window, straight into the output, is far
        # faster than one big gather (docs/data.md): the window is read once as uint8 and
        # the output written once, while it is in cache.
        b, s, c = images.shape[0], self.image_size, self.crop
        out = self._out
        if out is None or out.shape[0] != b:
            out = torch.empty(b, 3, c, c, dtype=torch.float32)
            self._out = out if self.reuse_output else None
        tops, lefts, flips = top.tolist(), left.tolist(), flip.tolist()
        for i in range(b):
            t, l, o = tops[i], lefts[i], out[i]
            if flips[i]:  # flip(img - mean) == flip(img) - flip(mean), element for element
                o.copy_(images[i, :, t:t + c, l:l + c].flip(-1))
                m = s - c - l
                o.sub_(self.mean_flipped[:, t:t + c, m:m + c])
            else:
                o.copy_(images[i, :, t:t + c, l:l + c])
                o.sub_(self.mean[:, t:t + c, l:l + c])
            if shift is not None:
                o.add_(shift[i].view(3, 1, 1))
        return out

    def _crops_by_gather(self, images: Tensor, top: Tensor, left: Tensor, flip: Tensor,
                         shift: Tensor | None) -> Tensor:
        # On a GPU a loop would launch kernels per image; one gather does the whole batch.
        # The same float operations in the same order as the CPU path: equal results.
        dev = images.device
        b, s, c = images.shape[0], self.image_size, self.crop
        top, left, flip = (_to_device(t, dev) for t in (top, left, flip))
        ar = torch.arange(c, device=dev)
        rows = top[:, None] + ar
        cols = torch.where(flip[:, None], left[:, None] + (c - 1) - ar, left[:, None] + ar)
        where = (rows[:, :, None] * s + cols[:, None, :]).reshape(b, 1, c * c).expand(b, 3, c * c)
        x = torch.gather(images.reshape(b, 3, s * s), 2, where).float()
        x = x - torch.gather(self.mean.reshape(1, 3, s * s).expand(b, 3, s * s), 2, where)
        if shift is not None:
            x = x + _to_device(shift, dev)[:, :, None]
        return x.view(b, 3, c, c)
