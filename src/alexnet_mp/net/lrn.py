"""Local response normalisation (sec. 3.3) as one autograd function.

    b_c = a_c / (k + alpha/n * sum_{j in window(c)} a_j^2) ** beta

the same function as ``torch.nn.functional.local_response_norm(x, n, alpha, beta, k)``,
whose window is channels ``c - n//2 .. c + (n-1)//2``. torch builds it from ``avg_pool3d``
over a padded copy of ``x**2`` and lets autograd differentiate the chain, which is slow
(docs/speed.md). Here the channel window is a few shifted in-place adds, ``d ** -beta`` is
computed once and kept for the backward, and the backward is written out:

    dL/da_i = g_i d_i^-beta - 2 beta alpha/n a_i sum_{c: i in window(c)} g_c a_c d_c^(-beta-1)

``groups`` normalises each of ``groups`` equal channel blocks on its own: one process of
the two-tower net holds both towers' channels, and the window never crosses a tower
(cuda-convnet's norm layers have 48 and 128 channels).

On a GPU with Triton the fused kernels of :mod:`alexnet_mp.net.lrn_triton` run instead (one
kernel each way); this module is the fallback where Triton or a GPU is missing.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["local_response_norm"]


def _window_sum(s: Tensor, before: int, after: int) -> Tensor:
    """Sum over channels ``c - before .. c + after`` of ``s`` ([N, G, C, H, W], dim 2), zero
    past either end of each group."""
    out = s.clone()
    for shift in range(1, before + 1):
        if shift < s.shape[2]:
            out[:, :, shift:] += s[:, :, :-shift]
    for shift in range(1, after + 1):
        if shift < s.shape[2]:
            out[:, :, :-shift] += s[:, :, shift:]
    return out


def _neg_pow(d: Tensor, beta: float) -> Tensor:
    # d ** -0.75 (both of the paper's settings) as rsqrt(d) * rsqrt(sqrt(d)): two cheap
    # roots instead of a pow (exp and log) per element.
    if beta == 0.75:
        r = torch.rsqrt(d)
        return r.mul_(torch.rsqrt(torch.sqrt(d)))
    return d.pow(-beta)


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
        n, c = x.shape[0], x.shape[1]
        g = x.reshape(n, groups, c // groups, *x.shape[2:])
        d = _window_sum(g * g, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)
        scale = _neg_pow(d, beta)
        ctx.save_for_backward(g, d, scale)
        ctx.size, ctx.alpha, ctx.beta = size, alpha, beta
        # A new tensor, not a view of one made here: later layers may write into it in place.
        return x * scale.reshape(x.shape)

    @staticmethod
    @once_differentiable  # the backward below is not itself differentiable: say so, never be wrong
    def backward(ctx, grad: Tensor):
        g, d, scale = ctx.saved_tensors
        size, alpha, beta = ctx.size, ctx.alpha, ctx.beta
        gy = grad.reshape(g.shape)
        # sum over the c whose window holds i: the window mirrored.
        inner = _window_sum(gy * g * scale / d, (size - 1) // 2, size // 2)
        gx = (gy * scale).addcmul_(g, inner, value=-2.0 * beta * alpha / size)
        return gx.reshape(grad.shape), None, None, None, None, None


TRITON = importlib.util.find_spec("triton") is not None


def local_response_norm(
    x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1,
    fused: bool | None = None,
) -> Tensor:
    """LRN over the channels of ``x`` ([N, C, H, W]), each of ``groups`` channel blocks alone.

    In fp32 when ``x`` is bf16 or fp16: the sum of squares and its 0.75 power lose too much
    in 8 bits of mantissa (``precision=bf16`` keeps LRN in fp32); the result is cast back.
    ``fused``: the Triton kernels (:mod:`alexnet_mp.net.lrn_triton`); None chooses them for a
    CUDA tensor where Triton is installed."""
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    if fused is None:
        fused = TRITON and x.is_cuda
    if fused and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 4:
        from alexnet_mp.net import lrn_triton

        return lrn_triton.local_response_norm(x, size, alpha, beta, k, groups)
    low = x.dtype in (torch.bfloat16, torch.float16)
    y = _LocalResponseNorm.apply(x.float() if low else x, size, alpha, beta, k, groups)
    return y.to(x.dtype) if low else y
