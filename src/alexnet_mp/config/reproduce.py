"""The schema of ``launch/reproduce.py`` (``conf/reproduce.yaml``): the paper's comparisons
(the full net, the half net, the ablations of secs. 3.3-7) trained and evaluated per seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

from omegaconf import MISSING

from alexnet_mp.config.data import DataConfig
from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import DEVICES

__all__ = ["ReproduceConfig", "store"]


@dataclass
class ReproduceConfig:
    data: DataConfig = MISSING
    configs: List[str] = setting(factory=lambda: ["full", "half", "no_lrn", "pool_2x2", "no_pca", "no_dropout",
                                                  "no_conv4"])
    seeds: List[int] = setting(factory=lambda: [0, 1, 2])
    ablation_seeds: int = setting(2, ge=1)
    epochs: int = setting(4, ge=1)
    train_overrides: List[str] = setting(factory=lambda: ["progress=false"])
    full_processes: int = setting(1, choices=(1, 2), means="1 (one process, groups=2) or 2 (one tower each)")
    threads: int = setting(1, ge=1)
    parallel: Any = setting("auto", auto=True, ge=1)
    device: str = setting("auto", choices=DEVICES)
    workers: Any = setting(0, auto=True, ge=0)
    prepare: bool = True
    sweep_dir: str = "outputs/reproduce"
    output_dir: str = "results"
    output_name: str = "reproduce"


def store(cs) -> None:
    cs.store(name="base_reproduce", node=ReproduceConfig)
