"""The schemas of the commands that use a trained net: ``launch/predict.py``
(``conf/predict.yaml``: the top-k classes of photographs, sec. 5's test crops),
``launch/export.py`` (``conf/export.yaml``: ONNX or a ``torch.export`` program) and
``launch/compare.py`` (``conf/compare.yaml``: what differs between two runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import DEVICES

__all__ = ["PredictConfig", "ExportConfig", "CompareConfig", "store"]


@dataclass
class PredictConfig:
    checkpoint: str = MISSING                 # model_final.pt, or the run directory holding it
    images: str = MISSING                     # an image file, or a folder searched recursively
    top_k: int = setting(5, ge=1)             # at most the net's class count (checked against the net)
    ten_crop: bool = False                    # the softmax averaged over ten patches (sec. 4.1)
    output: Optional[str] = None              # a JSON file of the predictions
    batch_size: int = setting(64, ge=1)
    device: str = setting("auto", choices=DEVICES)
    threads: int = setting(2, ge=1)
    progress: bool = True


@dataclass
class ExportConfig:
    checkpoint: str = MISSING
    out: str = MISSING                        # FILE.onnx or FILE.pt2 (checked by the exporter)
    threads: int = setting(2, ge=1)


@dataclass
class CompareConfig:
    a: str = MISSING                          # a run directory
    b: str = MISSING                          # the other run directory


def store(cs) -> None:
    cs.store(name="base_predict", node=PredictConfig)
    cs.store(name="base_export", node=ExportConfig)
    cs.store(name="base_compare", node=CompareConfig)
