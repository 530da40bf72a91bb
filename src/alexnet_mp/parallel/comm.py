"""Every move between towers, in one place.

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
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet_mp.parallel import comm_trace
from alexnet_mp.parallel.collectives import is_channels_last, offset, stack_shares, start_all_gather, start_reduce_scatter

__all__ = ["TowerExchange", "crossing_layer", "gather_from_towers", "gather_logits", "set_profile"]


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
    """forward: all-gather every tower's share of the classes;
    backward: keep this tower's slice, no communication.

    Everything downstream of the logits (softmax, loss) is computed identically on
    every device, so each already holds the whole gradient; summing would double it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group) -> Tensor:
        ctx.sizes, ctx.group = sizes, group
        return torch.cat(start_all_gather(x, x.dim() - 1, sizes, group, "logits", "forward").wait(), dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rank = dist.get_rank(ctx.group)
        return grad.narrow(grad.dim() - 1, offset(ctx.sizes, rank), ctx.sizes[rank]), None, None


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
