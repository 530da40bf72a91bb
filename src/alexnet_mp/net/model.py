"""AlexNet built from the architecture table in :mod:`alexnet_mp.net.arch`.

One class serves every network here. Built with ``tower=None`` it is the whole net
in one process: layers that do not cross towers (conv2, conv4, conv5) are
``groups=2`` convolutions and LRN runs per tower, so it computes exactly the
two-GPU function of Krizhevsky et al. (2012), sec. 3.2. Built with
``tower=(index, count)`` it is one tower: every layer keeps that tower's share of
the units, and the inputs of crossing layers arrive through an ``exchange``.
The model knows nothing of ``torch.distributed``; :mod:`alexnet_mp.parallel.towers`
supplies the exchange that talks to the other device.

    >>> from alexnet_mp import build_model
    >>> net = build_model("full", num_classes=1000)        # 60,965,224 parameters
    >>> half = build_model("half", num_classes=1000)       # the one-GPU comparison net
    >>> one = build_model("one_tower", num_classes=1000)   # the one-column net of 2014
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet_mp.net.arch import (
    LRN_OPTIONS,
    WEIGHT_STD,
    Layer,
    NetSpec,
    TORCHVISION_PAD,
    ablate,
    conv1_padding,
    crop_of,
    feature_map_sizes,
    spec_from_options,
    split_sizes,
)
from alexnet_mp.errors import UserError
from alexnet_mp.net.lrn import local_response_norm

__all__ = ["AlexNet", "Exchange", "build_model", "count_parameters"]

PIXEL_STD = 60.0  # natural images, 0..255 scale (ImageNet's RGB std is about 0.23 x 255)


class Exchange:
    """How a crossing layer gets its input. In one process every tower's output is
    already here, so both moves are the identity."""

    def gather(self, x: Tensor, layer: str, sizes: list[int]) -> Tensor:  # noqa: ARG002
        """Input of crossing ``layer``; ``sizes`` are each tower's share of its channels."""
        return x

    def crossing(self, layer: str, module: nn.Module, x: Tensor, sizes: list[int]) -> Tensor:
        """Crossing ``layer``'s output before ReLU: ``module`` applied to every tower's units,
        of which ``x`` holds this tower's (``sizes``: each tower's share along dim 1). An
        exchange that talks to other devices may overlap the move with the layer's compute."""
        return module(self.gather(x, layer, sizes))

    def gather_logits(self, x: Tensor, sizes: list[int]) -> Tensor:  # noqa: ARG002
        return x


class SharedMaskDropout(nn.Module):
    """Dropout whose mask is drawn for the *whole* layer and sliced to this tower.

    Each tower draws the full ``[batch, width]`` mask from an identically seeded
    generator and keeps its own columns, so the two towers together apply exactly
    the mask the one-process net draws (sec. 4.2; pitfall in the spec, sec. 7).

    With ``replicas`` > 1 (data-parallel replicas, each given an equal share of the global
    batch's rows), each replica draws the mask for the *global* batch and keeps its rows:
    every replica's generator stays in step, and together they apply the one-process mask.
    """

    def __init__(self, p: float, width: int, offset: int):
        super().__init__()
        self.p, self.width, self.offset = p, width, offset
        self.replica, self.replicas = 0, 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        rows = x.shape[0]
        mask = torch.empty((rows * self.replicas, self.width), device=x.device, dtype=x.dtype).bernoulli_(keep)
        mask = mask[self.replica * rows : (self.replica + 1) * rows, self.offset : self.offset + x.shape[1]]
        # Inverted dropout: the paper halves outputs at test time instead; same expectation.
        return x * mask / keep


class AlexNet(nn.Module):
    """The whole net (``tower=None``) or one tower of it (``tower=(index, count)``).

    ``lrn_function`` computes the LRN layers, called as :func:`alexnet_mp.net.lrn.local_response_norm`
    is (``x, size, alpha, beta, k, groups``); the export passes an exportable one.
    """

    def __init__(
        self,
        spec: NetSpec,
        *,
        input_size: int = 224,
        geometry: str = "224",
        lrn: str = "paper",
        tower: tuple[int, int] | None = None,
        exchange: Exchange | None = None,
        init: str | None = "paper",
        lrn_function: Callable[..., Tensor] = local_response_norm,
    ):
        super().__init__()
        if lrn == "none":
            spec = ablate(spec, lrn=False)
        if tower is not None and tower[1] != spec.towers:
            raise UserError(f"the {spec.name} net has {spec.towers} tower(s), not {tower[1]}")
        self.spec, self.input_size, self.geometry, self.lrn_option = spec, input_size, geometry, lrn
        self.tower = tower
        self.exchange = exchange or Exchange()
        self.pad = conv1_padding(input_size, geometry)
        self.lrn_params = LRN_OPTIONS.get(lrn)
        self.lrn_function = lrn_function
        # Per-tower groups when the whole net lives here; a tower is dense within itself.
        self.groups_here = spec.towers if tower is None else 1
        last_side = list(feature_map_sizes(input_size, geometry, spec).values())[-1]

        previous: Layer | None = None
        for layer in spec.layers:
            out_units = self.local_width(layer)
            in_units = self._in_units(layer, previous, last_side)
            if layer.kind == "conv":
                groups = 1 if layer.crosses else self.groups_here
                module: nn.Module = nn.Conv2d(in_units, out_units, layer.kernel, layer.stride, layer.padding, groups=groups)
            else:
                module = nn.Linear(in_units, out_units)
            self.add_module(layer.name, module)
            if layer.dropout:
                self.add_module(f"{layer.name}_dropout", SharedMaskDropout(spec.dropout_p, layer.width, self.local_offset(layer)))
            previous = layer
        if init is not None:
            self.reset_parameters(init)

    # -- the shares -----------------------------------------------------------------------
    def share_batch(self, replica: int, replicas: int) -> None:
        """This replica's rows of every global batch are what the net sees (data parallelism):
        dropout keeps those rows of the global batch's mask."""
        for m in self.modules():
            if isinstance(m, SharedMaskDropout):
                m.replica, m.replicas = replica, replicas

    def local_width(self, layer: Layer) -> int:
        if self.tower is None:
            return layer.width
        return split_sizes(layer.width, self.tower[1])[self.tower[0]]

    def shares(self, layer: Layer) -> list[int]:
        """Each tower's share of ``layer``'s units, as the exchange moves them."""
        return [layer.width] if self.tower is None else split_sizes(layer.width, self.tower[1])

    def local_offset(self, layer: Layer) -> int:
        if self.tower is None:
            return 0
        return sum(split_sizes(layer.width, self.tower[1])[: self.tower[0]])

    def _in_units(self, layer: Layer, previous: Layer | None, last_side: int) -> int:
        if previous is None:
            return 3  # conv1 reads the image; both towers see the same one
        # A crossing layer reads every tower's units, the others only their own tower's.
        units = previous.width if layer.crosses else self.local_width(previous)
        if layer.kind == "fc" and previous.kind == "conv":
            units *= last_side * last_side  # fc6's fan-in follows the input size
        return units

    def reset_parameters(self, init: str = "paper") -> None:
        """``"paper"`` (sec. 5): weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.

        ``"he"``: weights ~ N(0, 2 / fan-in) (He et al. 2015), biases 0, and conv1's weights
        divided by 60, the pixel standard deviation of natural images on the 0..255 scale the
        paper trains on, so every layer starts with unit-scale activations. Not the paper's;
        it starts learning within a few hundred steps, which the paper's does not (README).
        """
        for layer in self.spec.layers:
            module = getattr(self, layer.name)
            if init == "paper":
                nn.init.normal_(module.weight, 0.0, WEIGHT_STD)
                nn.init.constant_(module.bias, layer.bias_init)
            else:
                fan_in = module.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5 / (PIXEL_STD if layer.name == "conv1" else 1.0)
                nn.init.normal_(module.weight, 0.0, std)
                nn.init.zeros_(module.bias)

    # -- forward --------------------------------------------------------------------------
    def _lrn(self, x: Tensor) -> Tensor:
        # The 5-channel window never crosses a tower boundary (cuda-convnet's norm layers
        # have 48 and 128 channels), so in one process normalise each tower's channels alone.
        return self.lrn_function(x, groups=self.groups_here, **self.lrn_params)

    def forward(self, x: Tensor, until: str | None = None) -> Tensor:
        """Logits; with ``until`` (a layer's name, one-process net only) that layer's output
        after its ReLU, LRN, pool and dropout, e.g. ``"fc7"`` for the features of Figure 4."""
        if until is not None and (self.tower is not None or until not in [l.name for l in self.spec.layers]):
            raise UserError(f"until={until!r}: name a layer of the one-process {self.spec.name} net")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise UserError(
                f"expected images of shape [batch, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}"
            )
        if self.pad:
            lead = TORCHVISION_PAD if self.geometry == "torchvision" else 0  # else all at the bottom/right
            x = F.pad(x, (lead, self.pad - lead, lead, self.pad - lead))
        previous: Layer | None = None
        for layer in self.spec.layers:
            module = getattr(self, layer.name)
            sizes = self.shares(previous) if previous is not None else []
            if layer.kind == "fc" and x.dim() == 4:
                # pool5 flattened channel-major: each tower's channels x 6 x 6 are one block of
                # fc6's columns, and the blocks in tower order are the one-process order.
                sizes = [n * x.shape[2] * x.shape[3] for n in sizes]
                x = torch.flatten(x, 1)
            if layer.crosses and previous is not None:
                x = self.exchange.crossing(layer.name, module, x, sizes)
            else:
                x = module(x)
            if layer.relu:
                x = F.relu(x)
            if layer.lrn:
                x = self._lrn(x)
            if layer.pool:
                x = (F.max_pool2d if layer.pool_kind == "max" else F.avg_pool2d)(x, *self.spec.pool)
            if layer.dropout:
                x = getattr(self, f"{layer.name}_dropout")(x)
            if layer.name == until:
                return x
            previous = layer
        return self.exchange.gather_logits(x, self.shares(self.spec.layers[-1]))


def build_model(
    name: str = "full",
    *,
    num_classes: int = 1000,
    input_size: int | None = None,
    geometry: str = "224",
    lrn: str = "paper",
    init: str | None = "paper",
    pool: str = "overlap",
    dropout: float = 0.5,
    remove: str | None = None,
    lrn_function: Callable[..., Tensor] = local_response_norm,
) -> AlexNet:
    """The paper's two-tower net (``"full"``), the one-GPU half net (``"half"``) or the one-column
    net of 2014 (``"one_tower"``), in one process.

    ``input_size`` defaults to the geometry's crop (224 or 227); any size from 67 px up works.
    ``lrn`` is ``"paper"`` (the printed formula), ``"cuda-convnet"`` (Krizhevsky's config) or
    ``"none"``. ``init`` is ``"paper"`` (sec. 5) or ``"he"`` (see :meth:`AlexNet.reset_parameters`).
    ``pool``, ``dropout`` and ``remove`` are the paper's ablations (:func:`alexnet_mp.net.arch.ablate`);
    :func:`alexnet_mp.net.arch.arch_options` reads them from a config. ``lrn_function``: see :class:`AlexNet`.
    """
    spec = spec_from_options(name, num_classes, lrn=lrn, pool=pool, dropout=dropout, remove=remove)
    return AlexNet(spec, input_size=input_size or crop_of(geometry), geometry=geometry, lrn=lrn, init=init,
                   lrn_function=lrn_function)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
