"""alexnet_mp.net.lrn: the hand-written LRN against torch's and against autograd's own gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp.net.lrn import local_response_norm


def _torchs(x, groups, **p):
    return torch.cat([F.local_response_norm(c, **p) for c in x.chunk(groups, 1)], 1)


@pytest.mark.parametrize("size, groups, channels", [(5, 1, 12), (5, 2, 16), (4, 1, 9), (7, 3, 6), (3, 1, 1)])
def test_equals_torchs_lrn_and_its_gradient(size, groups, channels):
    torch.manual_seed(size)
    x = (torch.randn(3, channels, 5, 4, dtype=torch.float64) * 40).relu().requires_grad_()
    p = dict(size=size, alpha=5e-4, beta=0.75, k=2.0)
    grad = torch.randn(3, channels, 5, 4, dtype=torch.float64)
    ours = local_response_norm(x, groups=groups, **p)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    theirs = _torchs(x, groups, **p)
    (theirs_grad,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 takes the two-roots path, others pow
def test_gradient_passes_gradcheck(beta):
    x = (torch.randn(2, 6, 3, 3, dtype=torch.float64) * 30).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 1e-3, beta, 2.0, groups=2), (x,))


def test_channels_last_and_bf16():
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 6, 6, dtype=torch.float64) * 20).relu()
    p = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
    grad = torch.randn_like(x)
    last = x.to(memory_format=torch.channels_last).requires_grad_()
    y = local_response_norm(last, groups=2, **p)
    y.backward(grad.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    plain = x.clone().requires_grad_()
    _torchs(plain, 2, **p).backward(grad)
    torch.testing.assert_close(y, _torchs(x, 2, **p), rtol=1e-12, atol=0)
    torch.testing.assert_close(last.grad, plain.grad, rtol=1e-10, atol=1e-14)
    # bf16 in, bf16 out, computed in fp32: the fp32 result rounded once (within one bf16 step).
    low = local_response_norm(x.float().bfloat16(), **p)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, F.local_response_norm(x.float().bfloat16().float(), **p).bfloat16(),
                               rtol=2**-7, atol=0)


def test_output_takes_in_place_ops_and_double_backward_is_refused():
    x = (torch.randn(2, 6, 3, 3) * 20).requires_grad_()
    y = local_response_norm(x, 5, 5e-4, 0.75, 2.0)
    y.mul_(2)  # a later in-place layer (a view of an intermediate would refuse this)
    (g,) = torch.autograd.grad(y, x, torch.randn_like(y).requires_grad_(), create_graph=True)
    # The backward is written by hand and not itself differentiable: an error, never a wrong Hessian.
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        g.sum().backward()


def test_channels_must_split_into_groups():
    with pytest.raises(ValueError, match="10 channels do not split into 3 groups"):
        local_response_norm(torch.ones(1, 10, 2, 2), 5, groups=3)


def test_device_check_times_both_lrns_and_reports_their_difference(tmp_path):
    # benchmarks/gpu_check/gpu_check.py's LRN part, run on the CPU at batch 2 (its other parts skipped).
    import json
    import os
    import subprocess
    import sys

    from helpers import ROOT

    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check" / "gpu_check.py"), "device=cpu", "lrn_batch=2",
                    "lrn_compile=false", "warmup=1", "steps=2", "skip_steps=true", "skip_data=true",
                    "skip_two=true", f"output_dir={tmp_path}"], check=True, cwd=ROOT, capture_output=True,
                   env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})  # fused: GPU only
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    # the parts it left out say so, in the result and its report
    assert result["skipped"] == {"two processes": "skip_two=true", "data": "skip_data=true", "steps": "skip_steps=true"}
    assert "Skipped: two processes (skip_two=true); data (skip_data=true); steps (skip_steps=true)." in (
        tmp_path / "gpu-check.md").read_text()
    rows = result["lrn"]
    assert {(r["implementation"], r["precision"]) for r in rows} == {
        (i, p) for i in ("torch", "alexnet_mp") for p in ("fp32", "bf16")}
    for r in rows:
        assert r["seconds"] > 0
        # fp32: rounding only; bf16: the same fp32 result rounded once, one bf16 step apart at most
        assert r["max_rel_diff_from_torch"] < (1e-6 if r["precision"] == "fp32" else 1e-2), r
    assert "| alexnet_mp | fp32 | 2 |" in (tmp_path / "gpu-check.md").read_text()
