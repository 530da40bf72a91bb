"""The schema of ``launch/figure1.py`` (``conf/figure1.yaml``): the paper's Figure 1, a small
CIFAR-10 net (one of two readings, ``net``) trained with ReLUs and with tanh units, each at the
learning rate a short search found fastest, and the epochs each needs to reach 25% training
error (sec. 3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import DEVICES

__all__ = ["NETS", "Figure1Config", "Figure1Data", "RateSearch", "store"]

# The readings of alexnet_mp.paper.figure1.net.READINGS, the default first (named here, not imported: the schema
# stays free of torch; tests/test_figure1.py checks the two agree).
NETS = ("layers80sec", "four_layer")


@dataclass
class Figure1Data:
    """The training images, decoded once into memory: an image folder (``root/train/<class>/``)
    or, for tests and dry runs, the project's synthetic images."""
    name: str = setting("imagefolder", choices=("imagefolder", "synthetic"))
    root: Optional[str] = None                # data.name=imagefolder: a folder with train/
    train_size: int = setting(0, ge=0)        # how many training images (a seeded subset); 0: all
    seed: int = setting(0, ge=0)              # which images make the subset
    image_size: int = setting(32, ge=8)       # the stored side (CIFAR-10: 32)
    num_classes: int = setting(10, ge=2)      # data.name=synthetic only; a folder has its own


@dataclass
class RateSearch:
    """Sec. 3.1: "the learning rates for each network were chosen independently to make
    training as fast as possible". Each rate trains ``epochs`` epochs from ``seed``; the one
    with the lowest running training error at the end is each neuron's rate. ``rates`` null:
    the net reading's own grid (``alexnet_mp.paper.figure1.net.READINGS``)."""
    rates: Optional[List[float]] = None
    epochs: int = setting(2, ge=1)
    seed: int = setting(1000, ge=0)           # apart from the reported seeds: no rate is picked on them


@dataclass
class Figure1Config:
    data: Figure1Data = setting(factory=Figure1Data)
    # The net (spec sec. 8): layers80sec (cuda-convnet's file: fc64, its initW, 0-255 input) or four_layer
    # (no fc64, LeCun's init, [0, 1] input). Each (net, training images) is a row of output_dir/figure1.*.
    net: str = setting(NETS[0], choices=NETS)
    neurons: List[str] = setting(factory=lambda: ["relu", "tanh"])
    epochs: int = setting(35, ge=1)           # the paper's x-axis runs to 35
    seeds: List[int] = setting(factory=lambda: [0, 1, 2])
    search: RateSearch = setting(factory=RateSearch)
    batch_size: int = setting(128, ge=1)
    momentum: float = setting(0.9, ge=0, lt=1)
    target_error: float = setting(0.25, gt=0, lt=1)
    channels_last: bool = True
    threads: int = setting(1, ge=1)           # torch CPU threads
    device: str = setting("auto", choices=DEVICES)
    output_dir: str = "outputs/figure1"       # figure1.{json,md,png}: a row per (net, images); a rerun skips the runs it holds (results: the committed one)
    progress: bool = True                     # a line per epoch


def store(cs) -> None:
    cs.store(name="base_figure1", node=Figure1Config)
