"""The per-image reference for the batch augmentation (Krizhevsky et al. 2012, sec. 4.1, 5).

:class:`PaperTransform` applies sec. 4.1 to ONE image, written as the paper reads; the
product does the same per batch on the training device
(:class:`alexnet_mp.data.BatchAugment`), and the tests hold the two equal. Training never
uses it, so it lives outside the product: it is the "before" row of
``benchmarks/data/bench_data.py`` and the oracle of the tests (tests/test_augment.py,
tests/test_data.py), which import it from here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alexnet_mp.data import DatasetStats, draw_augmentations, pca_shift, pca_weights, ten_crop
from alexnet_mp.errors import UserError

__all__ = ["PaperTransform"]


class PaperTransform:
    """Sec. 4.1 on ONE uint8 [3, S, S] image -> float32 [3, crop, crop]: the per-image
    reference for :class:`alexnet_mp.data.BatchAugment`, which does the same per batch
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
