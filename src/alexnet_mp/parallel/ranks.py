"""What every rank of the job agrees on: small collectives over the whole job (or a group of
it) used outside the towers' forward and backward passes, each a no-op in one process.

``barrier``, ``broadcast_object`` (rank 0's run directory, resume decision, a problem found
by one rank), ``gather_object`` (every rank's checkpoint shard record), ``all_ranks`` (a flag true everywhere: finite loss, a usable checkpoint, a stop
signal), ``sum_over`` (the replicas' losses and error counts), ``all_equal`` (both towers see
the same batch) and ``is_lost_peer`` (how a collective says a peer is gone). The towers' own
moves are :mod:`alexnet_mp.parallel.comm`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from alexnet_mp.parallel.collectives import start_all_gather

__all__ = ["all_equal", "all_ranks", "barrier", "broadcast_object", "gather_object", "is_lost_peer", "sum_over"]


def is_lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is how a collective reports a lost peer: torch's ``DistBackendError``,
    or gloo's transport error, a plain RuntimeError. (Under NCCL a survivor waits in a CUDA
    sync until torchrun kills it or NCCL's watchdog aborts it.)"""
    if isinstance(err, dist.DistBackendError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("gloo" in text or "connection reset" in text
                                              or "connection closed" in text)


def _group_device(group) -> torch.device:
    """Where the group's collectives take their tensors: this rank's GPU under NCCL."""
    if str(dist.get_backend(group)) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_equal(x: Tensor, group=None) -> bool:
    """True when ``x`` is bit-identical on every rank (used to check both towers see the same batch)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return True
    n = dist.get_world_size(group)
    parts = start_all_gather(x.detach(), 0, [x.shape[0]] * n, group, "check", "forward").wait()
    return all(torch.equal(parts[0], p) for p in parts[1:])


def all_ranks(flag: bool, group=None) -> bool:
    """True when ``flag`` is true on every rank; every rank gets the same answer."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_group_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return bool(t.item())


def sum_over(t: Tensor, group=None) -> Tensor:
    """``t`` summed over ``group`` in place (the replicas' losses and error counts); ``t``
    lives on the group's device (the GPU under NCCL)."""
    if dist.is_initialized() and group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def barrier(group=None) -> None:
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.barrier(group=group)


def broadcast_object(obj, src: int = 0, group=None):
    """Rank ``src``'s Python object on every rank (run directory, resume decision)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def gather_object(obj) -> list:
    """Every rank's Python object, in rank order, on every rank (the whole job)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
