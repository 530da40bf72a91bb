"""Every move between towers, and between the processes of the data and hybrid schemes, in one place.

The towers of Krizhevsky et al. (2012, sec. 3.2) talk only at the inputs of conv3, fc6,
fc7 and fc8, and where the logits are put together. Each move is a small autograd function
whose docstring states both directions. A crossing layer can hide its move behind its own
compute (:func:`crossing_layer`): it applies its weight's block for this tower's units
while the other tower's units are in flight, and in backward sends the input gradient
first and computes the weight gradient while it travels. The collectives themselves, on
one flat buffer per crossing, are :mod:`alexnet_mp.parallel.collectives`; nothing is timed unless
the tracer (:mod:`alexnet_mp.parallel.comm_trace`) is on. A group of one member bypasses every move.
Collectives over the whole job outside the passes (barrier, broadcast, sums) are
:mod:`alexnet_mp.parallel.ranks`'s.

The hybrid scheme (Krizhevsky 2014; :mod:`alexnet_mp.parallel.hybrid`) adds its own moves at the end:
a pass's pool5 from its owner to every process (:func:`start_pass_input`, :func:`pass_input`),
fc-block outputs gathered for a replicated layer (:func:`gather_replicated`), every pass's labels
(:func:`gather_labels`) and the convolutional gradients summed over the processes
(:func:`sum_gradients`). The data scheme's only move, the gradient average, is
DistributedDataParallel's (:mod:`alexnet_mp.parallel.data_parallel`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet_mp.parallel import comm_trace
from alexnet_mp.parallel.collectives import (Pending, is_channels_last, launch, offset, stack_shares, start_all_gather,
                                             start_reduce_scatter)

__all__ = ["TowerExchange", "crossing_layer", "gather_from_towers", "gather_logits", "gather_labels",
           "gather_replicated", "pass_input", "set_profile", "start_pass_input", "sum_gradients"]


def set_profile(on: bool = True) -> None:
    """``profile=true``: trace every collective, the GPU synchronised around each; off: record nothing."""
    comm_trace.start(sync=True) if on else comm_trace.stop()


def _start_reduce_scatter(grad: Tensor, sizes: list[int], group, layer: str):
    return start_reduce_scatter(stack_shares(grad, 1, sizes), is_channels_last(grad), 1, sizes, group, layer)


class _GatherFromTowers(torch.autograd.Function):
    """forward: all-gather every tower's units (concatenated in tower order along dim 1);
    backward: reduce-scatter, i.e. sum the gradient over towers and keep this tower's slice.

    The gathered tensor feeds *different* weights on each device, so the gradient of
    this tower's units is the sum of what every tower's layer sends back (spec, sec. 7).
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group, layer: str) -> Tensor:
        ctx.sizes, ctx.group, ctx.layer = sizes, group, layer
        return torch.cat(start_all_gather(x, 1, sizes, group, layer, "forward").wait(), dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _start_reduce_scatter(grad, ctx.sizes, ctx.group, ctx.layer).wait(), None, None, None


class _CrossingLayer(torch.autograd.Function):
    """A crossing layer (conv3, fc6, fc7, fc8) on every tower's units, its weight split by
    input tower: y = W_own x_own + sum of W_other x_other + b.

    forward: async all-gather of every tower's units, overlapped with this tower's block
    W_own x_own + b; the other towers' blocks are added when their units have arrived.
    backward: the gradient of the whole gathered input first, then its async reduce-scatter
    (sum over towers, keep this tower's slice), overlapped with the weight and bias gradients.

    ``conv`` is (stride, padding, dilation) for a convolution, None for a linear layer;
    ``sizes`` are each tower's share of the input along dim 1 (for fc6, channels x 6 x 6 of
    pool5 flattened channel-major, a contiguous block per tower). The whole input is kept for
    the backward in one tensor: the weight gradient is one GEMM (or convolution) over it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, conv: tuple | None, sizes: list[int],
                group, layer: str) -> Tensor:
        rank = dist.get_rank(group)
        gathering = start_all_gather(x, 1, sizes, group, layer, "forward")
        dtype = _compute_dtype(x, weight)  # bf16 under autocast, as the module would compute
        w = weight.to(dtype)

        def block(units: Tensor, tower: int, b: Tensor | None = None) -> Tensor:
            w_block = w.narrow(1, offset(sizes, tower), sizes[tower])
            if conv is None:
                return F.linear(units.to(dtype), w_block, b)
            return F.conv2d(units.to(dtype), w_block, b, *conv)

        y = block(x, rank, None if bias is None else bias.to(dtype))  # while the others' units travel
        parts = gathering.wait()
        for tower, units in enumerate(parts):
            if tower != rank:
                y.add_(block(units, tower))
        full = torch.cat([x if tower == rank else units for tower, units in enumerate(parts)], dim=1).to(dtype)
        ctx.save_for_backward(full, w)
        ctx.conv, ctx.sizes, ctx.group, ctx.layer = conv, sizes, group, layer
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        full, w = ctx.saved_tensors
        grad = grad.to(w.dtype)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        conv = None if ctx.conv is None else [list(v) for v in ctx.conv]

        def conv_backward(mask: list[bool]):
            return torch.ops.aten.convolution_backward(grad, full, w, [w.shape[0]] if mask[2] else None, *conv,
                                                       False, [0] * len(conv[0]), 1, mask)

        exchange = None
        if need_x:  # first, so that its exchange travels while the weight gradient is computed
            grad_x = grad.mm(w) if conv is None else conv_backward([True, False, False])[0]
            exchange = _start_reduce_scatter(grad_x.to(ctx.x_dtype), ctx.sizes, ctx.group, ctx.layer)
        grad_w = grad_b = None
        if conv is None:
            grad_w = grad.t().mm(full) if need_w else None
            grad_b = grad.sum(0) if need_b else None
        elif need_w or need_b:
            _, grad_w, grad_b = conv_backward([False, need_w, need_b])
        grad_x = exchange.wait() if exchange is not None else None
        return grad_x, grad_w, grad_b, None, None, None, None


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


def _conv_args(module: nn.Module) -> tuple | None:
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        return module.stride, module.padding, module.dilation
    raise TypeError(f"a crossing layer is an nn.Linear or a dense, zero-padded nn.Conv2d, not {module!r}")


class _GatherLogits(torch.autograd.Function):
    """forward: all-gather every tower's share of the classes (or of a hybrid fc block's units);
    backward: keep this tower's slice, no communication.

    Everything downstream (softmax and the loss; in the hybrid, a replicated fc8 too) is computed
    identically on every device, so each already holds the whole gradient; summing would double it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group, layer: str = "logits") -> Tensor:
        ctx.sizes, ctx.group = sizes, group
        return torch.cat(start_all_gather(x, x.dim() - 1, sizes, group, layer, "forward").wait(), dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rank = dist.get_rank(ctx.group)
        return grad.narrow(grad.dim() - 1, offset(ctx.sizes, rank), ctx.sizes[rank]), None, None, None


def gather_from_towers(x: Tensor, sizes: list[int], group=None, layer: str = "?") -> Tensor:
    """Input of a crossing layer (conv3, fc6, fc7, fc8). forward: all-gather; backward: reduce-scatter."""
    return x if len(sizes) == 1 else _GatherFromTowers.apply(x, sizes, group, layer)


def crossing_layer(x: Tensor, module: nn.Module, sizes: list[int], group=None, layer: str = "?") -> Tensor:
    """``module`` (conv3, fc6, fc7, fc8) on every tower's units, of which ``x`` holds this tower's, before ReLU.
    forward: async all-gather overlapped with this tower's block; backward: async reduce-scatter of the
    input gradient overlapped with the weight gradient."""
    if len(sizes) == 1:
        return module(x)
    return _CrossingLayer.apply(x, module.weight, module.bias, _conv_args(module), sizes, group, layer)


def gather_logits(x: Tensor, sizes: list[int], group=None) -> Tensor:
    """fc8's outputs to every device. forward: all-gather; backward: local slice only."""
    return x if len(sizes) == 1 else _GatherLogits.apply(x, sizes, group)


class TowerExchange:
    """The exchange a tower uses (see :class:`alexnet_mp.net.model.Exchange`).

    With ``overlap`` (the default) a crossing layer computes its own tower's block while the
    other tower's units are in flight (:func:`crossing_layer`); without it, it gathers every
    tower's units first and then applies the layer (:func:`gather_from_towers`), for comparison.
    """

    def __init__(self, group=None, overlap: bool = True):
        self.group, self.overlap = group, overlap
        # Under torch.compile each move is one graph break: the compiler never traces the
        # collectives inside (wrapped here, not at import: it loads the compiler).
        disable = torch.compiler.disable
        self._crossing, self._gather, self._gather_logits = (
            disable(crossing_layer), disable(gather_from_towers), disable(gather_logits))

    def gather(self, x: Tensor, layer: str, sizes: list[int]) -> Tensor:
        return self._gather(x, sizes, self.group, layer)

    def crossing(self, layer: str, module: nn.Module, x: Tensor, sizes: list[int]) -> Tensor:
        if self.overlap:
            return self._crossing(x, module, sizes, self.group, layer)
        return module(self.gather(x, layer, sizes))

    def gather_logits(self, x: Tensor, sizes: list[int]) -> Tensor:
        return self._gather_logits(x, sizes, self.group)


# -- the hybrid scheme's moves (Krizhevsky 2014) ---------------------------------------------

def _global(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def start_pass_input(x: Tensor, src: int, group=None, layer: str = "pool5") -> Pending:
    """Launch the broadcast of pass ``src``'s input (rank ``src``'s pool5 features) to every rank;
    ``x`` is this rank's own, of the same shape. ``wait()`` gives rank ``src``'s. Launched ahead,
    it travels while the passes before it compute."""
    rank = dist.get_rank(group)
    buffer = x.detach().contiguous() if rank == src else torch.empty_like(x, memory_format=torch.contiguous_format)
    start = lambda: dist.broadcast(buffer, _global(group, src), group=group, async_op=True)  # noqa: E731
    return Pending(launch(start, x.device, layer, "forward", comm_trace.BROADCAST,
                          buffer.numel() * buffer.element_size(), dist.get_world_size(group)), lambda: buffer)


class _PassInput(torch.autograd.Function):
    """forward: rank ``src``'s pool5 features, broadcast to every rank (launched by
    :func:`start_pass_input`; here only waited for);
    backward: reduce to rank ``src``: the gradient of its features is the sum of what every
    rank's fc6 block sends back; rank ``src`` gets it, the others none.

    ``x`` is this rank's own features: on rank ``src`` the gradient flows into them."""

    @staticmethod
    def forward(ctx, x: Tensor, pending: Pending, src: int, group, layer: str) -> Tensor:
        ctx.src, ctx.group, ctx.layer = src, group, layer
        return pending.wait().clone() if dist.get_rank(group) != src else x.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad, mine = grad.contiguous(), dist.get_rank(ctx.group) == ctx.src
        start = lambda: dist.reduce(grad, _global(ctx.group, ctx.src), group=ctx.group, async_op=True)  # noqa: E731
        launch(start, grad.device, ctx.layer, "backward", comm_trace.REDUCE, grad.numel() * grad.element_size(),
               dist.get_world_size(ctx.group)).wait()
        return (grad if mine else None), None, None, None, None


def pass_input(x: Tensor, pending: Pending, src: int, group=None, layer: str = "pool5") -> Tensor:
    """Pass ``src``'s input on every rank. forward: broadcast from ``src``; backward: reduce to ``src``."""
    return _PassInput.apply(x, pending, src, group, layer)


def gather_replicated(x: Tensor, sizes: list[int], group=None, layer: str = "?") -> Tensor:
    """A split layer's outputs (this rank's ``sizes[rank]`` units) whole on every rank, for a layer
    computed identically on every rank (the hybrid's replicated fc8). forward: all-gather;
    backward: this rank's slice, no communication (:class:`_GatherLogits`)."""
    return x if len(sizes) == 1 else _GatherLogits.apply(x, sizes, group, layer)


def gather_labels(labels: Tensor, group=None) -> Tensor:
    """Every rank's labels in rank order (the hybrid's passes; no gradient). forward: all-gather."""
    world = dist.get_world_size(group)
    if world == 1:
        return labels
    return torch.cat(start_all_gather(labels, 0, [len(labels)] * world, group, "labels", "forward").wait())


def sum_gradients(params: list[nn.Parameter], group=None, scale: float = 1.0, layer: str = "conv") -> None:
    """Every rank's gradients of replicated ``params`` summed (times ``scale``) in place, one flat
    buffer: the hybrid's data-parallel convolutional layers after the backward pass. A move of the
    backward direction only (the weights are the same everywhere: forward moves nothing)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or dist.get_world_size(group) == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    start = lambda: dist.all_reduce(flat, group=group, async_op=True)  # noqa: E731
    launch(start, flat.device, layer, "backward", comm_trace.ALL_REDUCE, flat.numel() * flat.element_size(),
           dist.get_world_size(group)).wait()
    if scale != 1.0:
        flat.mul_(scale)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
