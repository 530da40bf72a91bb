"""The one-column net's state dict in torchvision's names, and back.

``build_model("one_tower", lrn="none", geometry="torchvision")`` computes torchvision's
``alexnet`` (Krizhevsky 2014; torchvision cites it): the same layers and widths, conv1 padded
2 px on every side, no LRN. Only the names differ: torchvision numbers the modules of its
``features`` and ``classifier`` sequences (its dropout comes before fc6 and fc7, ours after;
at evaluation both are the identity). ``from_torchvision`` renames a torchvision state dict
(e.g. its pretrained ImageNet weights, docs/using.md) into ours; ``to_torchvision`` the other way.
"""

from __future__ import annotations

from torch import Tensor

from alexnet_mp.errors import UserError

__all__ = ["TORCHVISION_NAMES", "from_torchvision", "to_torchvision"]

# our layer -> torchvision's module, in torchvision.models.alexnet's numbering
TORCHVISION_NAMES = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
                     "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}


def to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our one-column net's state dict under torchvision's names."""
    return {f"{TORCHVISION_NAMES[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()}


def from_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ``alexnet`` state dict under our names (``build_model("one_tower", ...)`` loads it)."""
    ours = {tv: mine for mine, tv in TORCHVISION_NAMES.items()}
    out = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        if module not in ours:
            raise UserError(f"{key!r} is not a parameter of torchvision's alexnet")
        out[f"{ours[module]}.{kind}"] = value
    return out
