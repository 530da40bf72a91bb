"""The schemas of ``launch/evaluate.py`` (``conf/evaluate.yaml``: centre-crop and ten-crop
error, sec. 5 "Test") and ``launch/figures.py`` (``conf/figures.yaml``: Figures 3 and 4).
Both read a trained run; ``data`` is null for the data it was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from alexnet_mp.config.data import DataConfig
from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import DEVICES

__all__ = ["EvaluateConfig", "FiguresConfig", "store"]


@dataclass
class EvaluateConfig:
    checkpoint: str = MISSING                 # model_final.pt, or the run directory holding it
    output: Optional[str] = None              # default: eval-<data>.json beside the checkpoint
    split: str = setting("val", choices=("val", "train"))
    batch_size: int = setting(64, ge=1)       # images per batch (each is ten patches)
    device: str = setting("auto", choices=DEVICES)
    threads: int = setting(2, ge=1)
    workers: Any = setting("auto", auto=True, ge=0)
    progress: bool = True
    allow_class_mismatch: bool = False        # other class names than the model's: a warning, not an error
    data: Optional[DataConfig] = None


@dataclass
class FiguresConfig:
    checkpoint: str = MISSING
    output_dir: Optional[str] = None          # default: RUN/figures
    seed: int = setting(0, ge=0)              # which validation images are drawn
    top5_images: int = setting(8, ge=0)       # Figure 4, left
    neighbour_queries: int = setting(5, ge=0)  # Figure 4, right: validation images ...
    neighbours: int = setting(6, ge=1)        # ... each with this many nearest training images
    train_images: int = setting(0, ge=0)      # training images searched; 0: all
    threads: int = setting(2, ge=1)
    allow_class_mismatch: bool = False        # other class names than the model's: a warning, not an error
    data: Optional[DataConfig] = None


def store(cs) -> None:
    cs.store(name="base_evaluate", node=EvaluateConfig)
    cs.store(name="base_figures", node=FiguresConfig)
