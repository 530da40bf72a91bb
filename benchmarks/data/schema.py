"""The schema of ``bench_data.py`` (``conf/bench_data.yaml``): images/s of each data path.

The benchmark's entry point registers it in Hydra's ConfigStore (:func:`register`) before
composing ``conf/bench_data.yaml``, whose defaults list names it (``- base_bench_data``): the product's
schema (:mod:`alexnet_mp.config`) knows nothing of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from alexnet_mp.config.schema import setting

__all__ = ["BenchDataConfig", "register"]


@dataclass
class BenchDataConfig:
    images: str = MISSING  # real JPEG photographs: a folder of train/ and/or val/ class folders
    image_size: int = setting(256, ge=1)
    crop: int = setting(224, ge=1)
    batch: int = setting(32, ge=1)
    max_images: int = setting(200, ge=1)
    repeats: int = setting(3, ge=1)
    skip_train: bool = False
    train_batch: int = setting(32, ge=1)
    work_dir: Optional[str] = None
    output_dir: str = "outputs/benchmarks"  # benchmarks/results (the published figures) only when asked


def register() -> None:
    """Store the schema as ``base_bench_data`` (idempotent)."""
    ConfigStore.instance().store(name="base_bench_data", node=BenchDataConfig)
