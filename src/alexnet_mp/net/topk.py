"""The paper's error measures (sec. 6): top-1 and top-5 mistakes of a batch of logits, for
validation during training (:func:`alexnet_mp.train.loop.validate`) and for a trained net
(:mod:`alexnet_mp.use.evaluate`)."""

from __future__ import annotations

import torch

__all__ = ["topk_wrong"]


def topk_wrong(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 and top-5 mistakes in a batch as a tensor [2] on the logits' device (no host
    wait); top-k is capped at the class count."""
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    return torch.stack([(~hit[:, 0]).sum(), (~hit.any(1)).sum()])
