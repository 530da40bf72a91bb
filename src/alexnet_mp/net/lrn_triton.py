"""The fused local response normalisation (sec. 3.3): one Triton kernel for the forward and
one for the backward of the channel window, on GPUs.

    b_c = a_c / (k + alpha/n * sum_{j in window(c)} a_j^2) ** beta

the window being channels ``c - n//2 .. c + (n-1)//2`` of the same group (the same function
as ``torch.nn.functional.local_response_norm``, and :mod:`alexnet_mp.net.lrn`, the hand-written
fallback used where Triton or a GPU is missing). Each program normalises one channel of a
block of pixels, reading its window's neighbours; the sums and powers are kept in fp32 for
fp32 and bf16 inputs, the output is in the input's dtype. The forward keeps ``d`` (the
denominator's base, fp32) for the backward:

    dL/da_i = g_i d_i^-beta - 2 beta alpha/n a_i sum_{c: i in window(c)} g_c a_c d_c^(-beta-1)

Strides are the tensor's own, so NCHW and channels_last run as they are stored. The ops are
``torch.library`` custom ops, so ``torch.compile`` keeps them whole without a graph break.
Tested on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["local_response_norm"]

BLOCK = 256  # pixels per program


@triton.jit
def _pixel_offsets(x_ptr, pid, pixels, hw, width, s_n, s_h, s_w, BLOCK: tl.constexpr):
    p = pid * BLOCK + tl.arange(0, BLOCK)
    inside = p < pixels
    n, rest = p // hw, p % hw
    return n * s_n + (rest // width) * s_h + (rest % width) * s_w, inside


@triton.jit
def _lrn_forward(x_ptr, y_ptr, d_ptr, pixels, hw, width, s_n, s_c, s_h, s_w, group_channels, scale, k, beta,
                 SIZE: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(1)
    base, inside = _pixel_offsets(x_ptr, tl.program_id(0), pixels, hw, width, s_n, s_h, s_w, BLOCK)
    first = (c // group_channels) * group_channels
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(SIZE):
        cj = c - SIZE // 2 + j
        ok = inside & (cj >= first) & (cj < first + group_channels)
        a = tl.load(x_ptr + base + cj * s_c, mask=ok, other=0.0).to(tl.float32)
        total += a * a
    d = k + scale * total
    a = tl.load(x_ptr + base + c * s_c, mask=inside, other=0.0).to(tl.float32)
    y = a * tl.exp2(-beta * tl.log2(d))
    tl.store(y_ptr + base + c * s_c, y.to(y_ptr.dtype.element_ty), mask=inside)
    tl.store(d_ptr + base + c * s_c, d, mask=inside)


@triton.jit
def _lrn_backward(g_ptr, x_ptr, d_ptr, gx_ptr, pixels, hw, width, s_n, s_c, s_h, s_w, group_channels, scale, beta,
                  SIZE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(1)
    base, inside = _pixel_offsets(x_ptr, tl.program_id(0), pixels, hw, width, s_n, s_h, s_w, BLOCK)
    first = (i // group_channels) * group_channels
    inner = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(SIZE):  # the c whose window holds i: the window mirrored
        c = i - (SIZE - 1) // 2 + j
        ok = inside & (c >= first) & (c < first + group_channels)
        g = tl.load(g_ptr + base + c * s_c, mask=ok, other=0.0).to(tl.float32)
        a = tl.load(x_ptr + base + c * s_c, mask=ok, other=0.0).to(tl.float32)
        d = tl.load(d_ptr + base + c * s_c, mask=ok, other=1.0)
        inner += g * a * tl.exp2((-beta - 1.0) * tl.log2(d))
    g = tl.load(g_ptr + base + i * s_c, mask=inside, other=0.0).to(tl.float32)
    a = tl.load(x_ptr + base + i * s_c, mask=inside, other=0.0).to(tl.float32)
    d = tl.load(d_ptr + base + i * s_c, mask=inside, other=1.0)
    gx = g * tl.exp2(-beta * tl.log2(d)) - 2.0 * beta * scale * a * inner
    tl.store(gx_ptr + base + i * s_c, gx.to(gx_ptr.dtype.element_ty), mask=inside)


def _geometry(x: Tensor) -> tuple:
    n, c, h, w = x.shape
    return (triton.cdiv(n * h * w, BLOCK), c), (n * h * w, h * w, w, x.stride(0), x.stride(1), x.stride(2),
                                                  x.stride(3))


@torch.library.custom_op("alexnet_mp::lrn_forward", mutates_args=())
def lrn_forward(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> tuple[Tensor, Tensor]:
    """(output, d): the fused forward of ``x`` ([N, C, H, W], any strides, fp32 or bf16)."""
    y, d = torch.empty_like(x), torch.empty_like(x, dtype=torch.float32)
    grid, args = _geometry(x)
    _lrn_forward[grid](x, y, d, *args, x.shape[1] // groups, alpha / size, k, beta, SIZE=size, BLOCK=BLOCK)
    return y, d


@lrn_forward.register_fake
def _(x, size, alpha, beta, k, groups):
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.float32)


@torch.library.custom_op("alexnet_mp::lrn_backward", mutates_args=())
def lrn_backward(grad: Tensor, x: Tensor, d: Tensor, size: int, alpha: float, beta: float, groups: int) -> Tensor:
    """The input gradient of :func:`lrn_forward` (``grad``, ``x`` and ``d`` in one layout)."""
    grad = grad if grad.stride() == x.stride() else torch.empty_like(x, dtype=grad.dtype).copy_(grad)
    gx = torch.empty_like(x)
    grid, args = _geometry(x)
    _lrn_backward[grid](grad, x, d, gx, *args, x.shape[1] // groups, alpha / size, beta, SIZE=size, BLOCK=BLOCK)
    return gx


@lrn_backward.register_fake
def _(grad, x, d, size, alpha, beta, groups):
    return torch.empty_like(x)


def _setup(ctx, inputs, output) -> None:
    x, size, alpha, beta, _k, groups = inputs
    ctx.save_for_backward(x, output[1])
    ctx.params = (size, alpha, beta, groups)


def _backward(ctx, grad_y: Tensor, _grad_d):
    x, d = ctx.saved_tensors
    return lrn_backward(grad_y, x, d, *ctx.params), None, None, None, None, None


lrn_forward.register_autograd(_backward, setup_context=_setup)


def local_response_norm(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                        groups: int = 1) -> Tensor:
    """LRN over the channels of ``x`` ([N, C, H, W]), each of ``groups`` channel blocks alone, fused."""
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    return lrn_forward(x, size, alpha, beta, k, groups)[0]
