"""One Figure 1 training run: plain SGD on images held in memory, and its running training error.

Sec. 3.1: "No regularization of any kind was employed": no dropout, no weight decay, no
augmentation. Each image is its stored pixels divided by the reading's divisor (255: [0, 1];
1: cuda-convnet's 0-255) less the mean image of the training images so divided. The
measure is the training error counted on each batch as it is trained (before the batch's
update), summed over the epoch: the error "on the training images as they are trained".
The input's scale and the start are the reading's (:data:`alexnet_mp.paper.figure1.net.READINGS`):
``layers80sec`` reads the pixels at 0-255 less the mean image, as cuda-convnet's provider does.

A run is a function of its seed: the seed draws the initial weights and each epoch's order
(:func:`alexnet_mp.data.epoch_order`), so the ReLU and the tanh net of one seed start from
the same weights and see the images in the same order; only the neuron differs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alexnet_mp.data.loader import epoch_order
from alexnet_mp.paper.figure1.net import DEFAULT_READING, READINGS, Figure1Net, build_net

__all__ = ["Images", "Recipe", "optimizer", "train_curve"]


@dataclass
class Images:
    """The training images in memory: uint8 [n, 3, S, S] and int64 labels, on the run's device;
    a batch is its pixels / ``divisor`` less the mean image / ``divisor``."""

    pixels: Tensor
    labels: Tensor
    divisor: float = 255.0

    def __post_init__(self) -> None:
        self.mean = self.pixels.float().mean(0, keepdim=True) / self.divisor  # the mean image

    def batch(self, rows: Tensor, channels_last: bool) -> tuple[Tensor, Tensor]:
        x = self.pixels[rows].float().div_(self.divisor).sub_(self.mean)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[rows]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Recipe:
    """What every run shares: the net's reading, SGD with momentum on the mean cross-entropy, a
    constant rate (the biases' the reading's multiple of it)."""

    batch_size: int = 128
    momentum: float = 0.9
    channels_last: bool = True
    num_classes: int = 10
    reading: str = DEFAULT_READING


def _seeded_net(neuron: str, seed: int, recipe: Recipe, input_size: int, device: torch.device) -> Figure1Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights for both neurons of one seed
        net = build_net(recipe.reading, neuron, num_classes=recipe.num_classes, input_size=input_size)
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if recipe.channels_last else net


def optimizer(net: Figure1Net, lr: float, recipe: Recipe) -> torch.optim.SGD:
    """SGD with momentum, no weight decay: the weights at ``lr``, the biases at the reading's multiple of it."""
    weights = [m.weight for m in net.children()]
    biases = [m.bias for m in net.children()]
    return torch.optim.SGD([{"params": weights}, {"params": biases, "lr": lr * READINGS[recipe.reading].bias_lr_scale}],
                           lr=lr, momentum=recipe.momentum, weight_decay=0.0)


def train_curve(images: Images, neuron: str, lr: float, seed: int, epochs: int, recipe: Recipe,
                on_epoch: Callable[[int, float, float], None] | None = None) -> dict:
    """Train one net; returns ``{"errors": [running training error of each epoch],
    "diverged": bool, "seconds": float}``. A run whose loss stops being finite is diverged:
    it stops there, with the epochs it finished. ``on_epoch(epoch, error, seconds)`` after
    each epoch (1-based)."""
    device = images.pixels.device
    net = _seeded_net(neuron, seed, recipe, images.pixels.shape[-1], device)
    opt = optimizer(net, lr, recipe)
    errors: list[float] = []
    diverged, start = False, time.perf_counter()
    for epoch in range(epochs):
        tic = time.perf_counter()
        order = epoch_order(len(images), shuffle=True, seed=seed, epoch=epoch).to(device)
        wrong = torch.zeros((), dtype=torch.int64, device=device)
        losses = torch.zeros((), device=device)
        for rows in order.split(recipe.batch_size):
            x, y = images.batch(rows, recipe.channels_last)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wrong += (logits.detach().argmax(1) != y).sum()
            losses += loss.detach()
        if not math.isfinite(losses.item()):
            diverged = True
            break
        errors.append(wrong.item() / len(images))
        if on_epoch is not None:
            on_epoch(epoch + 1, errors[-1], time.perf_counter() - tic)
    return {"errors": errors, "diverged": diverged, "seconds": time.perf_counter() - start}
