"""The speed options (bf16 autocast, channels_last, torch.compile) change how fast, not what is trained."""

from __future__ import annotations

import os

import pytest
import torch

from alexnet_mp import data
from alexnet_mp.config.train import ModelConfig, OptimConfig, ScheduleConfig
from alexnet_mp.data import BatchAugment
from alexnet_mp.train import Speed, build_run_state, train_step

MODEL = ModelConfig(name="full", init="he")
# Rate 0: the weights stay put, so every batch's loss and gradients compare the option with
# fp32 eager without the chaos of training amplifying rounding.
OPTIM = OptimConfig(lr=0.0, momentum=0.0, weight_decay=0.0)
SCHEDULE = ScheduleConfig()


@pytest.fixture(scope="module")
def inputs():
    ds = data.SyntheticImages("train", 10, 48, 77, seed=0)
    stats = data.compute_stats(ds, 48, 0, progress=False)
    augment = BatchAugment(stats, 67, seed=0)
    return [(augment.train(b.images, b.indices, 0), b.labels)
            for b in data.BatchLoader(ds, 16, shuffle=True, seed=0, workers=0, drop_last=True).epoch(0)]


@pytest.fixture(scope="module")
def fp32_eager(inputs):
    """The reference every option is compared with, computed once for the module."""
    return _losses(Speed(), inputs)


def _losses(speed: Speed, inputs) -> tuple[list[float], dict]:
    torch.set_num_threads(1)
    state = build_run_state(MODEL, OPTIM, SCHEDULE, num_classes=10, input_size=67, seed=0,
                            device=torch.device("cpu"), speed=speed)
    losses, grads = [], []
    for x, y in inputs:
        losses.append(float(train_step(state, x, y)))
        grads.append({n: p.grad.clone() for n, p in state.model.named_parameters()})
    return losses, grads


def _assert_close(reference, other, tolerance):
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    for a, b in zip(loss_a, loss_b):
        assert abs(a - b) <= tolerance * abs(a), (loss_a, loss_b)
    for grad_a, grad_b in zip(grads_a, grads_b):
        for name, g in grad_a.items():
            assert grad_b[name].dtype == torch.float32  # master weights and their gradients stay fp32
            assert (grad_b[name] - g).norm() <= tolerance * g.norm(), name


@pytest.mark.parametrize("speed, tolerance", [
    # Losses agree to 2e-7; a gradient up to 3e-3 (relative norm): where a max-pool window holds
    # several equal values (ReLU zeros), NHWC kernels send the gradient to another of them.
    (Speed(channels_last=True), 1e-2),
    # bf16 keeps 8 bits of mantissa: losses within 0.04%, gradients within 18% (relative norm).
    (Speed(precision="bf16"), 0.25),
])
def test_speed_option_gives_the_fp32_losses_and_gradients(inputs, fp32_eager, speed, tolerance):
    _assert_close(fp32_eager, _losses(speed, inputs), tolerance)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default",
                    reason="under ATEN_CPU_CAPABILITY=default inductor's generated C++ does not compile "
                           "('at::vec' has not been declared): torch's limitation, not this project's")
def test_compiled_net_gives_the_eager_losses(inputs, fp32_eager):
    # Inductor's fused kernels round differently, and its max-pool backward breaks ties (windows
    # of ReLU zeros) differently too: losses within 1e-4, gradients 3e-3 (relative norm) apart.
    _assert_close(fp32_eager, _losses(Speed(compile=True), inputs), 1e-2)
