"""torchvision's pretrained AlexNet as a ``model_final.pt`` that evaluate and predict read.

torchvision's ``alexnet`` is the one-column net of Krizhevsky (2014) without LRN and with conv1
padded 2 px (``build_model("one_tower", lrn="none", geometry="torchvision")``,
:mod:`alexnet_mp.net.torchvision_keys`). Its input differs from this project's: torchvision feeds
``(x / 255 - mean) / std`` per channel, this project ``x - mean_image`` on the 0..255 scale. With
``mean_image`` the constant ``255 * mean`` per channel and conv1's weights of channel c divided by
``255 * std[c]``, conv1 sees the same numbers times its weights, zero padding included (both pad
after the mean is taken away), so the net computes torchvision's logits (:func:`fold_normalization`).
The user downloads the weights (docs/using.md); nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from alexnet_mp.io import atomic_save
from alexnet_mp.net.torchvision_keys import from_torchvision

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "fold_normalization", "write_model_file"]

# torchvision's ImageNet normalisation (on the [0, 1] scale)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fold_normalization(state: dict[str, Tensor], std=IMAGENET_STD) -> dict[str, Tensor]:
    """Our-named state dict whose conv1 reads ``x - 255 * mean`` (0..255) as torchvision's reads
    ``(x / 255 - mean) / std``."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=state["conv1.weight"].dtype)
    return {**state, "conv1.weight": state["conv1.weight"] * scale.view(1, 3, 1, 1)}


def write_model_file(torchvision_state: dict[str, Tensor], classes: list[str], path: str | Path, *,
                     image_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Path:
    """Write ``path``: torchvision's ``alexnet`` weights (its state dict) as a ``model_final.pt`` of the
    one-column net, for stored images of side ``image_size`` (256: torchvision's resize, then its
    224 centre crop). ``classes``: the names of its outputs, in order (the folder names of the data
    it will be evaluated on)."""
    state = fold_normalization(from_torchvision(torchvision_state), std)
    num_classes = state["fc8.bias"].numel()
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a net of {num_classes} outputs")
    crop = round(image_size * 224 / 256)
    mean_image = torch.tensor([255.0 * m for m in mean]).view(3, 1, 1).expand(3, image_size, image_size).clone()
    data_config = {"name": "imagefolder", "root": None, "num_classes": num_classes, "seed": 0,
                   "image_size": image_size, "mean_subtraction": True, "flip": True, "pca_sigma": 0.0,
                   "pca_scale": "sqrt", "workers": "auto", "augment": "device", "stats_samples": 10000,
                   "stats_cache": "data"}
    path = Path(path)
    atomic_save({"model": {"name": "one_tower", "num_classes": num_classes, "input_size": crop,
                           "geometry": "torchvision", "lrn": "none", "pool": "overlap", "dropout": 0.5,
                           "remove": None, "towers": 1},
                 "state_dict": state, "classes": list(classes), "provenance": {"source": "torchvision alexnet"},
                 "data": {"name": "imagefolder", "image_size": image_size, "crop": crop, "config": data_config},
                 "stats": {"mean_image": mean_image, "eigvals": torch.ones(3), "eigvecs": torch.eye(3)}}, path)
    return path
