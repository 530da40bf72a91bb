"""A dataset decoded once into memory: every image a row of one uint8 tensor.

For small images trained over many epochs (CIFAR-10's 32x32, Figure 1) decoding each
file again every epoch would cost more than the step; decoded once, a whole epoch is a
gather from one tensor. Images that cannot be read are dropped, each said once per job
on one log line (as :class:`~alexnet_mp.data.images.ImageFolderImages` says it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from alexnet_mp.data.loader import read_images
from alexnet_mp.errors import UserError

__all__ = ["decode_into_memory", "subset_indices"]


def subset_indices(n: int, size: int, seed: int) -> list[int]:
    """``size`` of ``n`` indices drawn without replacement by ``seed`` (sorted), or all when
    ``size`` is 0 or at least ``n``."""
    if size <= 0 or size >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist())


def decode_into_memory(base: Any, indices: list[int] | None = None, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """(uint8 images [n, 3, S, S], int64 labels [n]) of ``indices`` of ``base`` (default: all)."""
    indices = list(range(len(base))) if indices is None else list(indices)
    images, labels = [], []
    for start in range(0, len(indices), chunk):
        x, y, _ = read_images(base, indices[start:start + chunk])
        images.append(x)
        labels.append(y)
    if not images or sum(len(y) for y in labels) == 0:
        raise UserError(f"no readable images among the {len(indices)} asked for")
    return torch.cat(images), torch.cat(labels)
