"""alexnet_mp.net.lrn_triton, the fused LRN, against torch's ``local_response_norm`` (values and
gradients), run on the CPU by Triton's interpreter (tiny shapes: the interpreter is slow)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton's interpreter, set before the kernels are decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")
import torch.nn.functional as F  # noqa: E402

triton = pytest.importorskip("triton")

from alexnet_mp.net import lrn_triton
from alexnet_mp.net.arch import LRN_OPTIONS  # noqa: E402
from alexnet_mp.net.lrn import local_response_norm  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or Triton's interpreter")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _torchs(x, groups, **p):
    return torch.cat([F.local_response_norm(c, **p) for c in x.chunk(groups, 1)], 1)


def _both(x, groups, grad, **p):
    ours = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y = lrn_triton.local_response_norm(ours, groups=groups, **p)
    y.backward(grad)
    ref = x.detach().double().requires_grad_()
    y_ref = _torchs(ref, groups, **p)
    y_ref.backward(grad.double())
    return y, ours.grad, y_ref, ref.grad


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("size, groups, channels", [(5, 2, 12), (5, 1, 7), (4, 1, 6), (3, 3, 9)])
def test_fp32_equals_torchs_lrn_and_its_gradient(layout, size, groups, channels):
    torch.manual_seed(size * channels)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = ((torch.randn(2, channels, 3, 5) * 30).relu() - 3).to(DEVICE).contiguous(memory_format=fmt)
    grad = torch.randn(x.shape, device=DEVICE).contiguous(memory_format=fmt)
    p = dict(size=size, alpha=5e-3, beta=0.75, k=2.0)
    y, gx, y_ref, gx_ref = _both(x, groups, grad, **p)
    assert y.dtype == torch.float32 and y.stride() == x.stride() and gx.stride() == x.stride()
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(LRN_OPTIONS))
def test_bf16_sums_in_fp32_with_the_papers_constants(name):
    torch.manual_seed(1)
    p = LRN_OPTIONS[name]
    x = (torch.randn(2, 10, 4, 3) * 20).relu().to(DEVICE).bfloat16()
    grad = torch.randn(x.shape, device=DEVICE).bfloat16()
    y, gx, y_ref, gx_ref = _both(x, 2, grad, **p)
    assert y.dtype == gx.dtype == torch.bfloat16
    # the fp32 result rounded once: within a bf16 step of torch's in float64 on the same bf16 input
    torch.testing.assert_close(y.double(), y_ref, rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=2**-7, atol=2**-7 * gx_ref.abs().max().item())


def test_a_mismatched_gradient_layout_is_taken_as_it_comes():
    x = torch.rand(2, 6, 3, 3, device=DEVICE).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 6, 3, 3, device=DEVICE)  # NCHW gradient for an NHWC input
    p = dict(size=5, alpha=1e-2, beta=0.75, k=1.0)
    _, gx, _, gx_ref = _both(x, 1, grad, **p)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=2e-5, atol=2e-6)


def test_the_fused_lrn_is_chosen_by_flag_and_matches_the_fallback():
    x = (torch.randn(1, 8, 3, 3) * 10).relu().to(DEVICE)
    p = dict(size=5, alpha=1e-3, beta=0.75, k=2.0, groups=2)
    fused, fallback = local_response_norm(x, fused=True, **p), local_response_norm(x, fused=False, **p)
    torch.testing.assert_close(fused, fallback, rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="do not split"):
        lrn_triton.local_response_norm(x, 5, groups=3)
