"""Which dataset a run's ``data`` config names: synthetic, an image folder or a prepared dataset.

The three sources of :mod:`alexnet_mp.data.images` and :mod:`alexnet_mp.data.prepared`,
opened for training and evaluation alike from ``conf/data/*.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from alexnet_mp.data.images import ImageFolderImages, SyntheticImages, check_same_classes
from alexnet_mp.data.prepared import open_prepared
from alexnet_mp.data.dataset_stats import DatasetStats
from alexnet_mp.errors import UserError

if TYPE_CHECKING:
    from alexnet_mp.job.launcher import Launcher

__all__ = ["base_datasets"]


def base_datasets(dcfg: DictConfig, launcher: Launcher | None = None) -> tuple[Any, Any, Path | None,
                                                                                DatasetStats | None]:
    """(train, val, folder for a statistics cache or None, statistics when the data has them).
    ``launcher``: the job's (:class:`alexnet_mp.job.launcher.Launcher`), for an image folder's
    once-per-job warnings; None: this process's."""
    if dcfg.name == "synthetic":
        make = lambda split, n: SyntheticImages(  # noqa: E731
            split, int(dcfg.num_classes), int(n), int(dcfg.image_size), int(dcfg.seed))
        return make("train", dcfg.train_size), make("val", dcfg.val_size), None, None
    if dcfg.name in ("imagefolder", "prepared"):
        if OmegaConf.is_missing(dcfg, "root") or dcfg.root in (None, ""):
            what = ("a folder with train/ and val/" if dcfg.name == "imagefolder"
                    else "a folder made by launch/prepare.py")
            raise UserError(f"data={dcfg.name} needs data.root=PATH ({what})")
        root = Path(str(dcfg.root)).expanduser()
        if dcfg.name == "prepared":
            train, val = open_prepared(root, int(dcfg.image_size))
            return train, val, None, train.stats()  # over the whole training set, computed by prepare
        train = ImageFolderImages(root, "train", int(dcfg.image_size), launcher)
        val = ImageFolderImages(root, "val", int(dcfg.image_size), launcher)
        check_same_classes(train, val)
        return train, val, root, None
    raise UserError(f"unknown data {dcfg.name!r}: choose synthetic, imagefolder or prepared")
