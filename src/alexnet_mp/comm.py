"""Every move between towers, in one place.

The towers of Krizhevsky et al. (2012, sec. 3.2) talk only at the inputs of
conv3, fc6, fc7 and fc8, and where the logits are put together. Each move is a
small autograd function whose docstring states both directions. Every
collective is counted in :data:`STATS` (bytes sent by this process and seconds
spent, by layer and direction) so benchmarks can report communication.

A group of one member bypasses every collective.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "STATS",
    "CommStats",
    "TowerExchange",
    "gather_from_towers",
    "gather_logits",
    "gather_shards",
    "all_equal",
    "all_ranks",
    "barrier",
    "broadcast_object",
]


@dataclass
class CommStats:
    """Bytes this process sent and seconds it spent in collectives, per (layer, direction)."""

    bytes: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def add(self, layer: str, direction: str, nbytes: int, seconds: float) -> None:
        key = (layer, direction)
        self.bytes[key] += nbytes
        self.seconds[key] += seconds
        self.calls[key] += 1

    def reset(self) -> None:
        self.bytes.clear()
        self.seconds.clear()
        self.calls.clear()

    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            f"{layer}.{direction}": {"bytes": self.bytes[(layer, direction)], "seconds": self.seconds[(layer, direction)],
                                     "calls": self.calls[(layer, direction)]}
            for layer, direction in sorted(self.bytes)
        }


STATS = CommStats()


def _sync(t: Tensor) -> None:
    # NCCL returns before the GPU has finished; wait so the seconds mean something.
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _all_gather_cat(x: Tensor, dim: int, sizes: list[int], group, layer: str, direction: str) -> Tensor:
    """All-gather ``x`` from every rank and concatenate along ``dim``; shares may differ in size."""
    x = x.contiguous()
    largest = max(sizes)
    if x.shape[dim] != largest:  # pad the smaller shares so every rank sends the same shape
        pad_shape = list(x.shape)
        pad_shape[dim] = largest - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(x) for _ in sizes]
    start = time.perf_counter()
    dist.all_gather(parts, x, group=group)
    _sync(x)
    STATS.add(layer, direction, x.numel() * x.element_size() * (len(sizes) - 1), time.perf_counter() - start)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)


def _offset(sizes: list[int], rank: int) -> int:
    return sum(sizes[:rank])


class _GatherFromTowers(torch.autograd.Function):
    """forward: all-gather every tower's units (concatenated in tower order);
    backward: reduce-scatter, i.e. sum the gradient over towers and keep this tower's slice
    (NCCL's reduce-scatter; an all-reduce and a slice on gloo).

    The gathered tensor feeds *different* weights on each device, so the gradient of
    this tower's units is the sum of what every tower's layer sends back (spec, sec. 7).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, sizes: list[int], group, layer: str) -> Tensor:
        ctx.dim, ctx.sizes, ctx.group, ctx.layer = dim, sizes, group, layer
        return _all_gather_cat(x, dim, sizes, group, layer, "forward")

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _reduce_scatter(grad, ctx.dim, ctx.sizes, ctx.group, ctx.layer), None, None, None, None


# Backends whose reduce-scatter moves fewer bytes than an all-reduce. gloo implements
# reduce-scatter with all-reduces, and measured twice as slow as one all-reduce here
# (communication 4.7% of the step against 2.4%, make bench-1gpu-vs-2gpu on 2 CPU cores).
REDUCE_SCATTER_BACKENDS = {"nccl"}


def _reduce_scatter(grad: Tensor, dim: int, sizes: list[int], group, layer: str) -> Tensor:
    """Sum ``grad`` over ranks and return this rank's slice along ``dim``.

    NCCL's reduce-scatter sends each rank only the slices the others own, (n-1)/n of the
    tensor. Elsewhere (gloo), or when the shares differ in size, an all-reduce followed by
    a slice gives the same numbers. The choice depends only on the backend, so every rank
    makes the same one.
    """
    rank, n = dist.get_rank(group), len(sizes)
    nbytes = grad.numel() * grad.element_size()
    start = time.perf_counter()
    if len(set(sizes)) == 1 and str(dist.get_backend(group)) in REDUCE_SCATTER_BACKENDS:
        parts = [p.contiguous() for p in grad.split(sizes, dim=dim)]
        out = torch.empty_like(parts[rank])
        dist.reduce_scatter(out, parts, op=dist.ReduceOp.SUM, group=group)
        _sync(out)
        STATS.add(layer, "backward", nbytes * (n - 1) // n, time.perf_counter() - start)
        return out
    grad = grad.contiguous()
    dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)
    _sync(grad)
    # A ring all-reduce sends about 2 (n-1)/n of the tensor per rank.
    STATS.add(layer, "backward", 2 * nbytes * (n - 1) // n, time.perf_counter() - start)
    return grad.narrow(dim, _offset(sizes, rank), sizes[rank]).contiguous()


class _GatherLogits(torch.autograd.Function):
    """forward: all-gather every tower's share of the classes;
    backward: keep this tower's slice, no communication.

    Everything downstream of the logits (softmax, loss) is computed identically on
    every device, so each already holds the whole gradient; summing would double it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group) -> Tensor:
        ctx.sizes, ctx.group = sizes, group
        return _all_gather_cat(x, x.dim() - 1, sizes, group, "logits", "forward")

    @staticmethod
    def backward(ctx, grad: Tensor):
        rank = dist.get_rank(ctx.group)
        return grad.narrow(grad.dim() - 1, _offset(ctx.sizes, rank), ctx.sizes[rank]).contiguous(), None, None


def gather_from_towers(x: Tensor, dim: int, sizes: list[int], group=None, layer: str = "?") -> Tensor:
    """Input of a crossing layer (conv3, fc6, fc7, fc8). forward: all-gather; backward: reduce-scatter."""
    if len(sizes) == 1:
        return x
    return _GatherFromTowers.apply(x, dim, sizes, group, layer)


def gather_logits(x: Tensor, sizes: list[int], group=None) -> Tensor:
    """fc8's outputs to every device. forward: all-gather; backward: local slice only."""
    if len(sizes) == 1:
        return x
    return _GatherLogits.apply(x, sizes, group)


class TowerExchange:
    """The exchange a tower uses (see :class:`alexnet_mp.model.Exchange`)."""

    def __init__(self, group=None):
        self.group = group

    def gather(self, x: Tensor, layer: str, sizes: list[int]) -> Tensor:
        return gather_from_towers(x, 1, sizes, self.group, layer)

    def gather_logits(self, x: Tensor, sizes: list[int]) -> Tensor:
        return gather_logits(x, sizes, self.group)


# -- outside the forward/backward pass ---------------------------------------------------------

def gather_shards(x: Tensor, sizes: list[int], group=None, dim: int = 0) -> Tensor:
    """Every tower's share of a parameter, concatenated along ``dim`` (no autograd)."""
    if len(sizes) == 1:
        return x
    with torch.no_grad():
        return _all_gather_cat(x.detach(), dim, sizes, group, "state_dict", "forward")


def all_equal(x: Tensor, group=None) -> bool:
    """True when ``x`` is bit-identical on every rank (used to check both towers see the same batch)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return True
    mine = x.detach().contiguous()
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    return all(torch.equal(parts[0], p) for p in parts[1:])


def all_ranks(flag: bool, group=None) -> bool:
    """True when ``flag`` is true on every rank; every rank gets the same answer."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend(group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return bool(t.item())


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
