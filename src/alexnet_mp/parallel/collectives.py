"""The towers' collectives on flat buffers: what the moves of :mod:`alexnet_mp.parallel.comm` launch and wait for.

Every share travels in one contiguous buffer per crossing: ``all_gather_into_tensor`` fills
a stack ``[ranks, *share]`` whose slots are each rank's share (views, no concatenation),
and ``reduce_scatter_tensor`` sums such a stack and leaves this rank's slot. A channels_last
share travels as its NHWC storage, so its slots stay channels_last. Shares of unequal size
travel padded to the largest.

Launching returns a :class:`Pending`: ``wait()`` makes the caller's stream wait for exactly
that collective (NCCL's work; the host waits under gloo), then gives the result. Only under
the opt-in tracer (:mod:`alexnet_mp.parallel.comm_trace`) does a collective record anything.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from alexnet_mp.parallel import comm_trace

__all__ = ["Pending", "REDUCE_SCATTER_BACKENDS", "gather_shards", "is_channels_last", "launch", "offset",
           "start_all_gather", "start_reduce_scatter", "stack_shares"]

# Backends whose reduce-scatter is used. gloo builds its reduce-scatter from all-reduces, slower
# than one all-reduce (docs/speed.md): on gloo the stack is all-reduced and this rank's slot kept
# (the same numbers).
REDUCE_SCATTER_BACKENDS = {"nccl"}
# torch 2.14 renames them (*_single); 2.11 has only the old names. Buffers travel in the
# concatenated form [ranks * dim0, ...] of the stack, the one gloo accepts.
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class Pending:
    """A launched collective: ``wait()`` waits for it (its work, traced or not) and returns ``result()``."""

    __slots__ = ("work", "result")

    def __init__(self, work, result: Callable[[], object]):
        self.work, self.result = work, result

    def wait(self):
        self.work.wait()
        result, self.result, self.work = self.result(), None, None
        return result


def launch(start: Callable, device: torch.device, layer: str, direction: str, op: str, handed: int, members: int):
    """``start()`` (an ``async_op=True`` collective ``op`` over ``members`` processes, handed a tensor of
    ``handed`` bytes), traced when the tracer is on (its byte convention: :mod:`alexnet_mp.parallel.comm_trace`)."""
    trace = comm_trace.TRACE
    return start() if trace is None else trace.launch(start, device, layer, direction, op, handed, members)


def offset(sizes: list[int], rank: int) -> int:
    return sum(sizes[:rank])


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is stored NHWC (and not also plainly contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _from_storage(nhwc: bool) -> Callable[[Tensor], Tensor]:
    return (lambda t: t.permute(0, 3, 1, 2)) if nhwc else (lambda t: t)


def _storage(x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """A contiguous tensor holding ``x``'s elements, and the map from such a tensor back to ``x``'s
    layout: a channels_last ``x`` keeps its NHWC storage (no copy), anything else is made contiguous."""
    nhwc = is_channels_last(x)
    return (x.permute(0, 2, 3, 1) if nhwc else x.contiguous()), _from_storage(nhwc)


def _padded(x: Tensor, dim: int, size: int) -> Tensor:
    if x.shape[dim] == size:
        return x
    pad = list(x.shape)
    pad[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_zeros(pad)], dim=dim)  # only where the shares differ


def _gloo_cuda(group, x: Tensor) -> bool:
    return x.is_cuda and str(dist.get_backend(group)) == "gloo"


def start_all_gather(x: Tensor, dim: int, sizes: list[int], group, layer: str, direction: str) -> Pending:
    """All-gather ``x`` into one stack; ``wait()`` returns each rank's share (views of it, in rank order)."""
    share, back = _storage(_padded(x, dim, max(sizes)))
    stack = share.new_empty((len(sizes), *share.shape))
    if _gloo_cuda(group, x):  # gloo on CUDA: the list form, straight into the stack's slots
        start = lambda: dist.all_gather(list(stack.unbind(0)), share, group=group, async_op=True)  # noqa: E731
    else:
        start = lambda: _all_gather_tensor(stack.flatten(0, 1), share, group=group, async_op=True)  # noqa: E731
    handed = share.numel() * share.element_size()
    return Pending(launch(start, x.device, layer, direction, comm_trace.ALL_GATHER, handed, len(sizes)),
                   lambda: [back(stack[r]).narrow(dim, 0, n) for r, n in enumerate(sizes)])


def stack_shares(grad: Tensor, dim: int, sizes: list[int]) -> Tensor:
    """``grad``'s slices along ``dim`` (one per rank, padded to the largest) as the slots of one
    contiguous stack, a channels_last ``grad``'s in NHWC storage: the input of a reduce-scatter
    (one copy)."""
    shape, nhwc = list(grad.shape), is_channels_last(grad)
    shape[dim] = max(sizes)
    storage = [shape[0], *shape[2:], shape[1]] if nhwc else shape
    stack = (grad.new_zeros if len(set(sizes)) > 1 else grad.new_empty)((len(sizes), *storage))
    back = _from_storage(nhwc)
    for r, n in enumerate(sizes):
        back(stack[r]).narrow(dim, 0, n).copy_(grad.narrow(dim, offset(sizes, r), n))
    return stack


def start_reduce_scatter(stack: Tensor, nhwc: bool, dim: int, sizes: list[int], group, layer: str) -> Pending:
    """Sum ``stack`` (from :func:`stack_shares`; ``nhwc``: its slots are NHWC storage) over ranks;
    ``wait()`` returns this rank's slice. The collective depends only on the backend, so every
    rank makes the same choice."""
    rank, n = dist.get_rank(group), len(sizes)
    back = _from_storage(nhwc)
    nbytes = stack.numel() * stack.element_size()
    if str(dist.get_backend(group)) in REDUCE_SCATTER_BACKENDS:
        out = torch.empty_like(stack[rank])
        start = lambda: _reduce_scatter_tensor(out, stack.flatten(0, 1), group=group, async_op=True)  # noqa: E731
        return Pending(launch(start, stack.device, layer, "backward", comm_trace.REDUCE_SCATTER, nbytes, n),
                       lambda: back(out).narrow(dim, 0, sizes[rank]))
    start = lambda: dist.all_reduce(stack, group=group, async_op=True)  # noqa: E731
    return Pending(launch(start, stack.device, layer, "backward", comm_trace.ALL_REDUCE, nbytes, n),
                   lambda: back(stack[rank]).narrow(dim, 0, sizes[rank]))


def gather_shards(x: Tensor, sizes: list[int], group=None, dim: int = 0) -> Tensor:
    """Every tower's share of a parameter, concatenated along ``dim`` (no autograd)."""
    if len(sizes) == 1:
        return x
    with torch.no_grad():
        return torch.cat(start_all_gather(x.detach(), dim, sizes, group, "state_dict", "forward").wait(), dim=dim)
