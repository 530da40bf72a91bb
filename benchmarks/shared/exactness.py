"""How far one tensor is from a reference: the exactness measure the device check reports and the
tests bound (``tests/helpers.py`` takes it from here), so the figures of docs/parallelism.md and
docs/gpu.md are one measure."""

from __future__ import annotations

import torch

__all__ = ["rel_diff"]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of tensor ``a`` from the reference ``b``, relative to ``b``'s
    largest magnitude (in float64)."""
    scale = b.abs().max().item() or 1.0
    return (a.double() - b.double()).abs().max().item() / scale
