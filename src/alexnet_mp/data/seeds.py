"""Seeds for every random draw of the data path, as a function of integers, never of global RNG.

Both towers' processes, any number of loader workers and a resumed run must see the same
images in the same order with the same augmentations (Krizhevsky et al. 2012, sec. 3.2:
the towers work on one batch). So every stream is seeded by a hash of the integers that
name it (a domain tag, the seed, the epoch, an index): :func:`mix` and :func:`generator`.
The domain tags keep the streams of different consumers of one seed independent.
"""

from __future__ import annotations

import torch

__all__ = ["TAG_AUGMENT", "TAG_CLASS", "TAG_IMAGE", "TAG_LOADER", "TAG_ORDER", "TAG_STATS", "generator", "mix"]

TAG_AUGMENT, TAG_ORDER, TAG_LOADER, TAG_CLASS, TAG_IMAGE, TAG_STATS = range(1, 7)
_M64 = (1 << 64) - 1


def mix(*parts: int) -> int:
    """Hash integers into a 63-bit seed (splitmix64 finaliser applied per part)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        z = ((h ^ (int(p) & _M64)) + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by :func:`mix` of ``parts``."""
    return torch.Generator().manual_seed(mix(*parts))
