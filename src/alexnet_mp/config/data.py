"""The schema of the ``data`` group (``conf/data/``): synthetic images, an image folder, or a
dataset made by ``launch/prepare.py``. Training, evaluation, figures, prepare, the benchmark
and the sweep compose the same group. The paper's preprocessing is sec. 2, the mean image and
fancy PCA sec. 4.1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from alexnet_mp.config.schema import MAY_CHANGE, setting

__all__ = ["DataConfig", "SyntheticData", "ImageFolderData", "PreparedData", "DATA_NAMES", "store"]

DATA_NAMES = ("synthetic", "imagefolder", "prepared")


@dataclass
class DataConfig:
    """What every data group has. ``root`` and the loader settings may change on resume."""

    name: str = setting("synthetic", choices=DATA_NAMES)
    # ??? here: a group merged over this node cannot set a value back to missing (OmegaConf
    # keeps the old value), so the folders' groups inherit it and synthetic sets null.
    root: Optional[str] = setting(MISSING, resume=MAY_CHANGE)
    num_classes: Any = setting("auto", auto=True, ge=2)   # auto: from the class folders
    # which images sample the mean image and the RGB covariance (synthetic: also the images themselves)
    seed: int = setting(0, ge=0)
    image_size: int = setting(256, ge=1)                  # the stored size (sec. 2: 256)
    mean_subtraction: bool = True
    flip: bool = True
    pca_sigma: float = setting(0.1, ge=0)                 # fancy PCA noise; 0 turns it off
    # sqrt: sqrt(eigenvalues), as cuda-convnet2; eigenvalue: the paper as printed
    pca_scale: str = setting("sqrt", choices=("sqrt", "eigenvalue"))
    # data-loading worker processes per rank; auto sizes to the machine
    workers: Any = setting("auto", auto=True, ge=0, resume=MAY_CHANGE)
    # device: crops, flips, mean and fancy PCA per batch on the training device; workers: in the loader workers
    augment: str = setting("device", choices=("device", "workers"), resume=MAY_CHANGE)


@dataclass
class SyntheticData(DataConfig):
    """Images the project generates, deterministic from ``seed``; no files."""

    name: str = setting("synthetic", choices=DATA_NAMES)
    root: Optional[str] = setting(None, resume=MAY_CHANGE)
    num_classes: int = setting(10, ge=2)
    train_size: int = setting(2000, ge=1)
    val_size: int = setting(500, ge=1)
    image_size: int = setting(77, ge=1)       # the paper's 256 scaled down; crops scale with it: 77 -> 67
    stats_samples: int = setting(2000, ge=1)  # images used for the mean image and the RGB covariance
    stats_cache: str = setting("run", choices=("data", "run"), resume=MAY_CHANGE)  # no folder of its own


@dataclass
class ImageFolderData(DataConfig):
    """``root`` with ``train/`` and ``val/`` folders of class folders of JPEG/PNG files."""

    name: str = setting("imagefolder", choices=DATA_NAMES)
    stats_samples: int = setting(10000, ge=1)
    # data: beside the images when that folder is writable, else in the run; run: always in the run
    stats_cache: str = setting("data", choices=("data", "run"), resume=MAY_CHANGE)


@dataclass
class PreparedData(DataConfig):
    """The ``out`` folder of ``launch/prepare.py``; its statistics cover the whole training set."""

    name: str = setting("prepared", choices=DATA_NAMES)


def store(cs) -> None:
    cs.store(group="data", name="base_synthetic", node=SyntheticData)
    cs.store(group="data", name="base_imagefolder", node=ImageFolderData)
    cs.store(group="data", name="base_prepared", node=PreparedData)
