"""AlexNet's architecture, written once, as data.

Every network in this project -- the paper's two-tower net in one process, one
tower of it on one device, the paper's one-GPU "half" net, and the one-column net of
Krizhevsky (2014) ("one_tower", torchvision's ``alexnet``) -- is built from the tables below. Widths are totals over both towers; a tower holds half of
every layer (Krizhevsky et al. 2012, sec. 3.2 and Figure 2).

Which layers *cross* towers is data too: conv3, fc6, fc7 and fc8 read both
towers' outputs; conv2, conv4 and conv5 read only their own tower's (sec. 3.2).

The paper's ablations are transforms of these tables (:func:`ablate`): LRN off
(sec. 3.3), non-overlapping pooling (sec. 3.4), dropout off (sec. 4.2) and one
middle conv layer removed (sec. 7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from alexnet_mp.errors import UserError

__all__ = [
    "Layer",
    "NetSpec",
    "ARCH_DEFAULTS",
    "GEOMETRIES",
    "INITS",
    "LRN_CHOICES",
    "LRN_OPTIONS",
    "MIN_INPUT_SIZE",
    "POOLINGS",
    "REMOVABLE",
    "ablate",
    "arch_options",
    "full_spec",
    "half_spec",
    "one_tower_spec",
    "crop_of",
    "spec_for",
    "spec_from_options",
    "conv1_padding",
    "feature_map_sizes",
    "split_sizes",
]


@dataclass(frozen=True)
class Layer:
    """One layer of the net, widths summed over all towers."""

    name: str
    kind: str  # "conv" or "fc"
    width: int  # output channels (conv) or features (fc)
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    crosses: bool = True  # input gathered from every tower (the paper's cross-GPU edges)
    relu: bool = True
    lrn: bool = False  # after ReLU (sec. 3.3)
    pool: bool = False  # max-pool after (ReLU and LRN); its window is the net's `pool` (sec. 3.4)
    pool_kind: str = "max"  # "max", or "avg" as in cuda-convnet's CIFAR-10 net (Figure 1, alexnet_mp.paper.figure1)
    dropout: bool = False  # on the outputs, with the net's `dropout_p` (sec. 4.2)
    bias_init: float = 0.0  # sec. 5: 1 in conv2, conv4, conv5, fc6, fc7; else 0


@dataclass(frozen=True)
class NetSpec:
    name: str
    towers: int  # 2 for the paper's net, 1 for the half net
    layers: tuple[Layer, ...]
    pool: tuple[int, int] = (3, 2)  # max-pool (kernel, stride): overlapping 3/2 (sec. 3.4)
    dropout_p: float = 0.5  # sec. 4.2

    @property
    def convs(self) -> tuple[Layer, ...]:
        return tuple(l for l in self.layers if l.kind == "conv")

    @property
    def fcs(self) -> tuple[Layer, ...]:
        return tuple(l for l in self.layers if l.kind == "fc")


POOL_KERNEL, POOL_STRIDE = 3, 2  # overlapping pooling, sec. 3.4
# model.pool: the paper's overlapping pooling, or the 2/2 pooling it was compared with (sec. 3.4)
POOLINGS = {"overlap": (POOL_KERNEL, POOL_STRIDE), "2x2": (2, 2)}
# model.remove: the middle conv layers sec. 7 says cost about 2 points of top-1 each when removed
REMOVABLE = ("conv3", "conv4", "conv5")
WEIGHT_STD = 0.01  # sec. 5
# The printed LRN formula (sec. 3.3): k=2, n=5, alpha=1e-4, beta=0.75. PyTorch divides
# alpha by n, so the printed formula is alpha=5e-4 there; Krizhevsky's cuda-convnet
# configuration (scale=0.0001) is alpha=1e-4 in PyTorch's convention.
LRN_OPTIONS = {
    "paper": dict(size=5, alpha=5e-4, beta=0.75, k=2.0),
    "cuda-convnet": dict(size=5, alpha=1e-4, beta=0.75, k=2.0),
}
LRN_CHOICES = (*LRN_OPTIONS, "none")  # "none": the ablation without LRN (sec. 3.3)
INITS = ("paper", "he")  # sec. 5's initialisation, or He et al.'s (AlexNet.reset_parameters)

# conv1 geometry: "224" reads pixels past the bottom/right edge as zero, as cuda-convnet
# does, giving 55x55 from a 224 crop; "227" is Caffe's unpadded 227 crop; "torchvision" pads a
# 224 crop with 2 zero pixels on every side, as torchvision's alexnet's conv1 (padding=2) does.
GEOMETRIES = ("224", "227", "torchvision")
_CROPS = {"224": 224, "227": 227, "torchvision": 224}  # each geometry's crop of a 256 image
TORCHVISION_PAD = 2
MIN_INPUT_SIZE = 67  # the smallest input that leaves a 1x1 map after pool5


def _convs(widths: tuple[int, ...], towers: int) -> tuple[Layer, ...]:
    w1, w2, w3, w4, w5 = widths
    own = towers == 1  # in the half net every layer is dense
    return (
        Layer("conv1", "conv", w1, kernel=11, stride=4, lrn=True, pool=True),
        Layer("conv2", "conv", w2, kernel=5, padding=2, crosses=own, lrn=True, pool=True, bias_init=1.0),
        Layer("conv3", "conv", w3, kernel=3, padding=1),
        Layer("conv4", "conv", w4, kernel=3, padding=1, crosses=own, bias_init=1.0),
        Layer("conv5", "conv", w5, kernel=3, padding=1, crosses=own, pool=True, bias_init=1.0),
    )


def _fcs(num_classes: int) -> tuple[Layer, ...]:
    return (
        Layer("fc6", "fc", 4096, dropout=True, bias_init=1.0),
        Layer("fc7", "fc", 4096, dropout=True, bias_init=1.0),
        Layer("fc8", "fc", num_classes, relu=False),
    )


def full_spec(num_classes: int = 1000) -> NetSpec:
    """The paper's two-GPU net: conv 96-256-384-384-256, fc 4096-4096-classes."""
    return NetSpec("full", 2, _convs((96, 256, 384, 384, 256), 2) + _fcs(num_classes))


def half_spec(num_classes: int = 1000) -> NetSpec:
    """The one-GPU comparison net (sec. 3.2, footnote 2): half the kernels in conv1-conv4,
    conv5 and the fully-connected layers not halved, everything dense."""
    return NetSpec("half", 1, _convs((48, 128, 192, 192, 256), 1) + _fcs(num_classes))


def one_tower_spec(num_classes: int = 1000) -> NetSpec:
    """The one-column net of Krizhevsky (2014) and cuda-convnet2's ``layers-imagenet-1gpu.cfg``:
    conv 64-192-384-256-256 with LRN after conv1 and conv2, fc 4096-4096-classes, everything dense.
    torchvision's ``alexnet`` is this net without LRN and with geometry "torchvision" (conv1 padding 2)."""
    return NetSpec("one_tower", 1, _convs((64, 192, 384, 256, 256), 1) + _fcs(num_classes))


def spec_for(name: str, num_classes: int) -> NetSpec:
    builders = {"full": full_spec, "half": half_spec, "one_tower": one_tower_spec}
    if name not in builders:
        raise UserError(f"unknown model {name!r}: choose one of {sorted(builders)}")
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    return builders[name](num_classes)


def crop_of(geometry: str) -> int:
    """The crop a geometry takes of a 256 image (224 or 227)."""
    if str(geometry) not in _CROPS:
        raise UserError(f"unknown crop geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    return _CROPS[str(geometry)]


def conv1_padding(input_size: int, geometry: str) -> int:
    """Zero rows (and columns) added to the image before conv1, in all: at the bottom and
    right ("224"), none ("227"), or :data:`TORCHVISION_PAD` on each side ("torchvision")."""
    if input_size < MIN_INPUT_SIZE:
        raise UserError(f"input_size {input_size} is too small: AlexNet needs at least {MIN_INPUT_SIZE} px")
    if geometry == "227":
        return 0
    if geometry == "torchvision":
        return 2 * TORCHVISION_PAD
    outputs = math.ceil((input_size - 11) / 4) + 1
    return (outputs - 1) * 4 + 11 - input_size


def feature_map_sizes(input_size: int, geometry: str, spec: NetSpec | None = None) -> dict[str, int]:
    """Side of each conv layer's output map (after its pool, if any) in ``spec`` (default:
    the paper's net)."""
    spec = spec or full_spec()
    kernel, stride = spec.pool
    side = input_size + conv1_padding(input_size, geometry)
    sizes = {}
    for layer in spec.convs:
        side = (side + 2 * layer.padding - layer.kernel) // layer.stride + 1
        if layer.pool:
            side = (side - kernel) // stride + 1
        if side < 1:
            raise UserError(f"input_size {input_size} leaves no pixels after {layer.name} of the {spec.name} net")
        sizes[layer.name] = side
    return sizes


def ablate(spec: NetSpec, *, lrn: bool | None = None, pool: str | None = None, dropout: float | None = None,
           remove: str | None = None) -> NetSpec:
    """``spec`` with the paper's ablations applied; ``None`` leaves a feature as it is.

    - ``lrn=False``: no local response normalisation (sec. 3.3);
    - ``pool``: ``"overlap"`` (3/2, sec. 3.4) or ``"2x2"`` (2/2, non-overlapping);
    - ``dropout``: the drop probability of fc6 and fc7 (0 turns dropout off, sec. 4.2);
    - ``remove``: a middle conv layer (conv3, conv4 or conv5) to leave out (sec. 7). What it
      did after itself (a max-pool) moves to the layer before it, and if it read both
      towers the layer after it does, so the towers still meet at the same depth.
    """
    layers = list(spec.layers)
    if lrn is not None:
        layers = [replace(l, lrn=l.lrn and lrn) for l in layers]
    if remove is not None:
        i = [l.name for l in layers].index(remove)
        gone = layers.pop(i)
        layers[i - 1] = replace(layers[i - 1], pool=layers[i - 1].pool or gone.pool, lrn=layers[i - 1].lrn or gone.lrn)
        layers[i] = replace(layers[i], crosses=layers[i].crosses or gone.crosses)
    changes: dict = {"layers": tuple(layers)}
    if pool is not None:
        changes["pool"] = POOLINGS[pool]
    if dropout is not None:
        changes["dropout_p"] = float(dropout)
    return replace(spec, **changes)


def spec_from_options(name: str, num_classes: int, *, lrn: str = "paper", pool: str = "overlap",
                      dropout: float = 0.5, remove: str | None = None) -> NetSpec:
    """The table of the ``name`` net with the architecture options applied (the keywords of
    :func:`arch_options` but ``geometry``, which fixes the input crop, not the table):
    ``lrn="none"`` drops the LRN layers (the one place that word is read), the rest as :func:`ablate`."""
    return ablate(spec_for(name, num_classes), pool=pool, dropout=float(dropout), remove=remove,
                  lrn=False if lrn == "none" else None)


def split_sizes(total: int, parts: int) -> list[int]:
    """How a layer of `total` units is shared among `parts` towers (first towers get the extra)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# The keys of conf/model that shape the net (and so a checkpoint), with the paper's values: the
# defaults of conf/model (config.train.ModelConfig reads them from here) and of checkpoints
# written before the ablation switches existed.
ARCH_DEFAULTS = {"geometry": "224", "lrn": "paper", "pool": "overlap", "dropout": 0.5, "remove": None}


def arch_options(model_cfg) -> dict:
    """The architecture keywords of :func:`alexnet_mp.net.model.build_model` from a model config
    (:class:`alexnet_mp.config.train.ModelConfig`, or its node of a composed config) or from a
    checkpoint's model signature (a mapping); keys it lacks take the paper's values."""
    out = {}
    for key, default in ARCH_DEFAULTS.items():
        value = model_cfg.get(key, default) if isinstance(model_cfg, Mapping) else getattr(model_cfg, key, default)
        out[key] = None if value is None else type(default)(value) if default is not None else str(value)
    return out
