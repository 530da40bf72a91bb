"""The four-layer CIFAR-10 net of the paper's Figure 1 (Krizhevsky et al. 2012, sec. 3.1), as data.

The paper does not print the net. The reading here is cuda-convnet's own fast CIFAR-10 net
(``layers-80sec.cfg``): conv 32 5x5 pad 2, max-pool 3/2, conv 32 5x5 pad 2, avg-pool 3/2,
conv 64 5x5 pad 2, avg-pool 3/2, fully connected 10, softmax. It is written as rows of
:class:`alexnet_mp.net.arch.Layer`, the same rows AlexNet's table is made of; ``relu=True`` on
a row marks "followed by the net's neuron", here the neuron under test (ReLU or tanh) on
every conv layer. There is nothing to regularise: no LRN, no dropout.

Pooling counts its outputs as cuda-convnet does (``outputsX=0``: enough windows to cover
the map, the last one clipped at the edge, an average over the pixels it covers), so a
32x32 image gives maps of 16, 8 and 4 pixels and fc10 reads 64 x 4 x 4 values. PyTorch's
``ceil_mode=True`` pooling is exactly that.

    >>> net = Figure1Net(figure1_spec(), "tanh")
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet_mp.net.arch import Layer, NetSpec

__all__ = ["NEURONS", "Figure1Net", "figure1_spec", "map_sizes"]

NEURONS = {"relu": torch.relu, "tanh": torch.tanh}  # sec. 3.1: f(x) = max(0, x) against f(x) = tanh(x)


def figure1_spec(num_classes: int = 10) -> NetSpec:
    """cuda-convnet's ``layers-80sec.cfg`` CIFAR-10 net (the spec's sec. 8 default reading)."""
    return NetSpec("layers-80sec", 1, (
        Layer("conv1", "conv", 32, kernel=5, padding=2, pool=True, pool_kind="max"),
        Layer("conv2", "conv", 32, kernel=5, padding=2, pool=True, pool_kind="avg"),
        Layer("conv3", "conv", 64, kernel=5, padding=2, pool=True, pool_kind="avg"),
        Layer("fc10", "fc", num_classes, relu=False),
    ), pool=(3, 2), dropout_p=0.0)


def _pooled(side: int, kernel: int, stride: int) -> int:
    return math.ceil((side - kernel) / stride) + 1  # cuda-convnet's output count (ceil_mode)


def map_sizes(spec: NetSpec, input_size: int) -> dict[str, int]:
    """Side of each conv layer's output map, after its pool."""
    sizes, side = {}, input_size
    for layer in spec.convs:
        side = (side + 2 * layer.padding - layer.kernel) // layer.stride + 1
        if layer.pool:
            side = _pooled(side, *spec.pool)
        sizes[layer.name] = side
    return sizes


class Figure1Net(nn.Module):
    """A one-tower net of conv and fc rows (``spec``) with ``neuron`` after every row marked
    ``relu``. Weights start as N(0, 1/fan-in) (LeCun's init, made for tanh units, so the
    start favours neither neuron), biases at the row's ``bias_init``."""

    def __init__(self, spec: NetSpec, neuron: str, *, input_size: int = 32, in_channels: int = 3):
        super().__init__()
        assert spec.towers == 1, "the Figure 1 builder makes one-tower nets"
        self.spec, self.neuron, self.input_size = spec, neuron, input_size
        self._neuron = NEURONS[neuron]
        side, units = input_size, in_channels
        sides = map_sizes(spec, input_size)
        for layer in spec.layers:
            if layer.kind == "conv":
                module: nn.Module = nn.Conv2d(units, layer.width, layer.kernel, layer.stride, layer.padding)
                side = sides[layer.name]
            else:
                module = nn.Linear(units * side * side, layer.width)
                side = 1
            units = layer.width
            self.add_module(layer.name, module)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.spec.layers:
            module = getattr(self, layer.name)
            nn.init.normal_(module.weight, 0.0, module.weight[0].numel() ** -0.5)
            nn.init.constant_(module.bias, layer.bias_init)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.spec.layers:
            if layer.kind == "fc":
                x = torch.flatten(x, 1)
            x = getattr(self, layer.name)(x)
            if layer.relu:
                x = self._neuron(x)
            if layer.pool:
                pool = F.max_pool2d if layer.pool_kind == "max" else F.avg_pool2d
                x = pool(x, *self.spec.pool, ceil_mode=True)
        return x
