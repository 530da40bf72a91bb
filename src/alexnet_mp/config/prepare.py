"""The schema of ``launch/prepare.py`` (``conf/prepare.yaml``): sec. 2's preprocessing done
once into shards that training reads with ``data=prepared``; the source is the ``data`` group
(an image folder: ``data.root``, ``data.image_size``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from alexnet_mp.config.data import DataConfig
from alexnet_mp.config.schema import setting

__all__ = ["PrepareConfig", "PrepareDebug", "store"]


@dataclass
class PrepareDebug:
    stop_after_shards: int = setting(0, ge=0)  # exit with status 3 after this many shards (tests)


@dataclass
class PrepareConfig:
    data: DataConfig = MISSING
    out: str = MISSING                         # a new or empty folder, or an earlier prepare to continue
    # raw: uint8 .npy shards, memory-mapped, no decoding; jpeg: re-encoded, about 10x smaller
    format: str = setting("raw", choices=("raw", "jpeg"))
    jpeg_quality: int = setting(90, ge=1, le=100)  # format=jpeg only
    workers: Any = setting("auto", auto=True, ge=1)  # processes; auto: one per core this process may use
    # images per shard; auto: about 4 shards per worker per split, 256 to 8192
    shard_size: Any = setting("auto", auto=True, ge=1)
    progress: bool = True                      # a bar on a terminal, a plain line every 30 s in a log
    debug: PrepareDebug = setting(factory=PrepareDebug)


def store(cs) -> None:
    cs.store(name="base_prepare", node=PrepareConfig)
