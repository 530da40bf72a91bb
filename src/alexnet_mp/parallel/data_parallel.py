"""The data scheme: the one-process net on every process, each on its share of the global batch.

cuda-convnet2's data parallelism (MultiGPU.md): every process holds the whole net and trains it
synchronously on its own rows of the global batch. The gradients are averaged over the processes
by torch's DistributedDataParallel (bucketed, overlapped with the backward pass): with each
process's loss the mean over its rows and the rows shared equally, the average is the global
batch's mean gradient, the one-process step up to rounding. Dropout keeps this process's rows of
the global batch's mask (:meth:`alexnet_mp.net.model.AlexNet.share_batch`), so the masks are the
one-process net's too. The weights are the same on every process: rank 0's are the run's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from alexnet_mp.errors import UserError
from alexnet_mp.net.model import AlexNet

__all__ = ["parallelize_data", "check_data"]


def check_data(world: int, batch_size: int) -> None:
    """One line, before training, when the global batch does not split evenly."""
    if batch_size % world:
        raise UserError(f"scheme=data: batch_size={batch_size} is the global batch and must split evenly "
                        f"over the {world} processes")


def parallelize_data(model: AlexNet, group=None, device: torch.device | str | None = None) -> DistributedDataParallel:
    """``model`` (the one-process net, the same weights on every process) on this process, set to
    see its rows of every global batch, wrapped so that backward averages the gradients over ``group``.
    ``.module`` is ``model`` (its state dict the one-process format). The towers' replicas use it
    too, with ``model`` a tower and ``group`` that tower's replicas."""
    model = model.to(device) if device is not None else model
    model.share_batch(dist.get_rank(group), dist.get_world_size(group))
    device = next(model.parameters()).device
    return DistributedDataParallel(model, process_group=group, device_ids=[device] if device.type == "cuda" else None)
