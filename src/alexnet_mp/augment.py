"""The paper's augmentations per batch, on the training device (Krizhevsky et al. 2012, sec. 4.1, 5).

The paper preprocessed once and augmented on the fly while the GPUs trained. Here the
loader hands over stored uint8 images [B, 3, S, S]; :class:`BatchAugment` turns them
into the net's float input where the net runs: random crop windows, horizontal
reflections, mean-image subtraction and fancy-PCA colour noise for training, the
centre crop or the ten patches for testing. The random choices come from
:func:`alexnet_mp.data.draw_augmentations`, keyed by (seed, epoch, index), so the
result equals :class:`alexnet_mp.data.PaperTransform` applied image by image
(bit for bit, tested) on every device, batch size and worker count.

    augment = BatchAugment(stats, crop=224, seed=0, device=torch.device("cuda", 0))
    x = augment.train(batch.images.to(device, non_blocking=True), batch.indices, batch.epoch)
"""

from __future__ import annotations

import torch
from torch import Tensor

from alexnet_mp.data import DatasetStats, draw_augmentations, pca_shift, pca_weights
from alexnet_mp.errors import UserError

__all__ = ["BatchAugment"]


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # Pinned first, so the copy is queued on the stream and the host never waits for it.
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


class BatchAugment:
    """Sec. 4.1 on a batch of uint8 [B, 3, S, S] images on ``device`` -> float32 [B, 3, crop, crop].

    ``stats`` gives the mean image (subtracted when ``mean_subtraction``) and the RGB
    eigen-decomposition for fancy PCA (``pca_sigma`` 0 turns it off; ``pca_scale`` is
    ``"sqrt"`` or ``"eigenvalue"``, see :class:`alexnet_mp.data.PaperTransform`).

    ``reuse_output`` (CPU only): :meth:`train` writes every batch into the same buffer, so
    the tensor it returns is overwritten by the next call. A fresh 77 MB buffer per
    batch of 128 costs more in page faults than the crops themselves (1,600 against 3,900
    images/s per core here); the trainer uses each batch before it asks for the next.
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
        mean-subtracted -> [B, 10, 3, crop, crop] (order as :func:`alexnet_mp.data.ten_crop`)."""
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
        # On a CPU one pass per image over its window, straight into the output, is the
        # fastest (9,600 images/s per core at 224 against 480 for one big gather): the
        # window is read once as uint8 and the output written once, while it is in cache.
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
