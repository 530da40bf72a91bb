"""The schema of ``launch/figure2.py`` (``conf/figure2.yaml``): Figure 2 drawn from the
architecture table, and one training step of the two towers traced (docs/parallelism.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import BACKENDS, DEVICES, ModelConfig

__all__ = ["Figure2Config", "store"]


@dataclass
class Figure2Config:
    model: ModelConfig = setting(MISSING)
    output_dir: str = "outputs/figure2"        # figure2.png, step-timeline.{json,png}; results: the committed ones
    image_size: Optional[int] = setting(None, ge=67)  # null: the geometry's crop (224 or 227)
    timeline: bool = True                      # false: Figure 2 only, no processes started
    batch_size: int = setting(8, ge=1)         # the traced step's batch (both towers see all of it)
    warmup_steps: int = setting(1, ge=0)       # untraced steps first, so the trace shows a steady step
    seed: int = setting(0, ge=0)
    overlap: bool = True                       # comm.overlap: crossing layers compute while the units travel
    device: str = setting("auto", choices=DEVICES)
    dist_backend: str = setting("auto", choices=BACKENDS)
    threads: int = setting(1, ge=1)            # CPU threads per tower
    dist_timeout_s: float = setting(120.0, gt=0)


def store(cs) -> None:
    cs.store(name="base_figure2", node=Figure2Config)
