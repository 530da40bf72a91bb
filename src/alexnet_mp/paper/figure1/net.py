"""The CIFAR-10 nets of the paper's Figure 1 (Krizhevsky et al. 2012, sec. 3.1), as data: two readings.

The paper does not print its "four-layer" net. The nearest net its authors published is
cuda-convnet's fast CIFAR-10 net (``layers-80sec.cfg``, spec sec. 8), and the spec offers two
readings of it (``net=`` of ``launch/figure1.py``):

- ``layers80sec`` (the default): the file as it defines the net. conv1 32 5x5 pad 2, max-pool
  3/2, conv2 32 5x5 pad 2, avg-pool 3/2, conv3 64 5x5 pad 2, avg-pool 3/2, fc64, fc10, softmax;
  Gaussian initial weights of the file's ``initW`` per layer (0.0001 for conv1, 0.01 for conv2
  and conv3, 0.1 for fc64 and fc10), biases 0; the input is the pixels at their 0-255 scale
  less the mean image (cuda-convnet's CIFAR-10 provider); biases learn at twice the weights'
  rate (the parameter file's epsB 0.002 against epsW 0.001).
- ``four_layer``: the same net without fc64 (four weight layers, the paper's word), weights
  N(0, 1/fan-in) (LeCun's init, made for tanh units, so the start favours neither neuron),
  biases 0, the input scaled to [0, 1] less the mean image, one rate for all parameters.

Each reading has its own learning-rate grid, since its input scale and start move its fastest
rate: ``layers80sec`` searches 0.001 (the file's own epsW) to 0.03, ``four_layer`` 0.01 to 0.3
(on 2,500 images for 3 epochs, ``layers80sec``'s ReLU was fastest at 0.003 and left chance
behind at 0.03, its tanh at 0.01, with 0.03 no better). The nets
are rows of :class:`alexnet_mp.net.arch.Layer`, the rows AlexNet's table is made of;
``relu=True`` on a row marks "followed by the net's neuron", here the neuron under test
(ReLU or tanh), which replaces every ``neuron=relu`` of the file. There is nothing to
regularise: no LRN, no dropout.

The file applies conv1's neuron after its max-pool; the rows apply it before. Both neurons
are non-decreasing, so a max over a window and the neuron commute: the two orders give the
same numbers (the tests check it).

Pooling counts its outputs as cuda-convnet does (``outputsX=0``: enough windows to cover
the map, the last one clipped at the edge, an average over the pixels it covers), so a
32x32 image gives maps of 16, 8 and 4 pixels and the first fc layer reads 64 x 4 x 4
values. PyTorch's ``ceil_mode=True`` pooling is exactly that.

    >>> net = build_net("layers80sec", "tanh")
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet_mp.net.arch import Layer, NetSpec

__all__ = ["DEFAULT_READING", "NEURONS", "READINGS", "Figure1Net", "Reading", "build_net", "figure1_spec",
           "map_sizes"]

NEURONS = {"relu": torch.relu, "tanh": torch.tanh}  # sec. 3.1: f(x) = max(0, x) against f(x) = tanh(x)


def _convs() -> tuple[Layer, ...]:
    return (
        Layer("conv1", "conv", 32, kernel=5, padding=2, pool=True, pool_kind="max"),
        Layer("conv2", "conv", 32, kernel=5, padding=2, pool=True, pool_kind="avg"),
        Layer("conv3", "conv", 64, kernel=5, padding=2, pool=True, pool_kind="avg"),
    )


def layers80sec_spec(num_classes: int = 10) -> NetSpec:
    """cuda-convnet's ``layers-80sec.cfg`` as the file defines it: three conv layers, fc64, fc10."""
    return NetSpec("layers-80sec", 1, (*_convs(), Layer("fc64", "fc", 64), Layer("fc10", "fc", num_classes,
                                                                                 relu=False)),
                   pool=(3, 2), dropout_p=0.0)


def four_layer_spec(num_classes: int = 10) -> NetSpec:
    """The four-layer variant: ``layers-80sec.cfg`` without its fc64."""
    return NetSpec("four-layer", 1, (*_convs(), Layer("fc10", "fc", num_classes, relu=False)),
                   pool=(3, 2), dropout_p=0.0)


@dataclass(frozen=True)
class Reading:
    """One reading of the Figure 1 net: its table, its start, its input and its rate grid."""

    name: str
    spec: Callable[[int], NetSpec]
    weight_std: Mapping[str, float] | None  # Gaussian std of each layer's initial weights; None: N(0, 1/fan-in)
    pixel_divisor: float                    # the input is pixels / divisor less the mean image of the same
    bias_lr_scale: float                    # the biases' rate over the weights'
    rates: tuple[float, ...]                # the learning rates searched when search.rates is not given
    init: str                               # in words, for the results
    input: str


READINGS = {
    "layers80sec": Reading(
        "layers80sec", layers80sec_spec,
        weight_std={"conv1": 1e-4, "conv2": 1e-2, "conv3": 1e-2, "fc64": 1e-1, "fc10": 1e-1},
        pixel_divisor=1.0, bias_lr_scale=2.0, rates=(0.001, 0.003, 0.01, 0.03),
        init="weights N(0, initW^2) with initW conv1 0.0001, conv2 0.01, conv3 0.01, fc64 0.1, fc10 0.1; biases 0",
        input="pixels at 0-255 less the mean image"),
    "four_layer": Reading(
        "four_layer", four_layer_spec, weight_std=None, pixel_divisor=255.0, bias_lr_scale=1.0,
        rates=(0.01, 0.03, 0.1, 0.3), init="weights N(0, 1/fan-in), biases 0",
        input="pixels / 255 less the mean image"),
}
DEFAULT_READING = "layers80sec"  # the authors' own net (spec sec. 8)


def figure1_spec(num_classes: int = 10, reading: str = DEFAULT_READING) -> NetSpec:
    """The table of a reading (default: ``layers80sec``)."""
    return READINGS[reading].spec(num_classes)


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
    ``relu``. Weights start N(0, std^2) with ``weight_std[row]``, or N(0, 1/fan-in) (LeCun's
    init) when ``weight_std`` is None; biases at the row's ``bias_init``."""

    def __init__(self, spec: NetSpec, neuron: str, *, weight_std: Mapping[str, float] | None = None,
                 input_size: int = 32, in_channels: int = 3):
        super().__init__()
        assert spec.towers == 1, "the Figure 1 builder makes one-tower nets"
        self.spec, self.neuron, self.input_size, self.weight_std = spec, neuron, input_size, weight_std
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
            std = module.weight[0].numel() ** -0.5 if self.weight_std is None else self.weight_std[layer.name]
            nn.init.normal_(module.weight, 0.0, std)
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


def build_net(reading: str, neuron: str, *, num_classes: int = 10, input_size: int = 32) -> Figure1Net:
    """The net of ``reading`` (a key of :data:`READINGS`) with ``neuron``, its weights drawn from torch's
    global generator."""
    r = READINGS[reading]
    return Figure1Net(r.spec(num_classes), neuron, weight_std=r.weight_std, input_size=input_size)
