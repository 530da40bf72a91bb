"""The schema of ``launch/get_data.py`` (``conf/get_data.yaml``): a public dataset fetched by
torchvision's downloader, its checksum checked, and written in the ImageFolder layout that
``data=imagefolder`` reads (docs/data.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from alexnet_mp.config.schema import setting

__all__ = ["GetDataConfig", "CIFAR10_URL", "CIFAR10_MD5", "store"]

# The official archive (https://www.cs.toronto.edu/~kriz/cifar.html) and the md5 published with it.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


@dataclass
class GetDataConfig:
    dataset: str = setting("cifar10", choices=("cifar10",))
    out: str = "data/cifar10"             # a new or empty folder: OUT/{train,val,test}/<class>/
    # val/: "test" (the official test split) or N, images per class held out of train (drawn with seed)
    val: str = setting("test", means="test or a positive integer (images per class held out of train)")
    train_per_class: Optional[int] = setting(None, ge=1)  # null: every train image not held out for val
    seed: int = setting(0, ge=0)          # the draw of val=N and train_per_class
    format: str = setting("png", choices=("png", "jpeg"))  # png: lossless; jpeg: as the committed results
    jpeg_quality: int = setting(75, ge=1, le=100)          # format=jpeg only (75: the committed subsets')
    url: str = CIFAR10_URL                # http(s); an archive already in OUT with the right md5 is used as it is
    md5: str = CIFAR10_MD5                # of the archive at url
    keep_archive: bool = True             # keep OUT/<archive> (a second run then downloads nothing)
    progress: bool = True


def store(cs) -> None:
    cs.store(name="base_get_data", node=GetDataConfig)
