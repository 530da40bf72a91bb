"""The schema of ``launch/train.py`` (``conf/config.yaml`` and its groups ``model/``,
``optim/``, ``schedule/``; ``data/`` is :mod:`alexnet_mp.config.data`).

The net's switches follow the paper's sections (3.3 LRN, 3.4 pooling, 4.2 dropout, 5 the
initialisation and SGD, 7 a removed middle layer); the words each accepts come from the
architecture's own tables in :mod:`alexnet_mp.net.arch`. A field with
``resume="may_change"`` says how long or how fast a run goes, not what it computes: a run may
be resumed with another value (:data:`RESUME_MAY_CHANGE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from alexnet_mp.net.arch import GEOMETRIES, INITS, LRN_CHOICES, POOLINGS, REMOVABLE
from alexnet_mp.config.data import DataConfig, ImageFolderData, PreparedData, SyntheticData
from alexnet_mp.config.scheme import SchemeConfig
from alexnet_mp.config.schema import MAY_CHANGE, resume_may_change, setting

__all__ = ["ModelConfig", "OptimConfig", "ScheduleConfig", "CommConfig", "CheckpointConfig", "DebugConfig",
           "TrainConfig", "BACKENDS", "COMPILE_MODES", "DEVICES", "RESUME_MAY_CHANGE", "store"]

# torch.compile's modes that a run may ask for (``compile_mode``, used with ``compile=true``).
# reduce-overhead replays the compiled forward and backward as CUDA graphs (on a GPU; elsewhere
# it is the default mode), which takes the kernel launches off the host (docs/speed.md).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "nccl", "gloo")


@dataclass
class ModelConfig:
    """The full two-tower net or the one-GPU half net (sec. 3.2), and the paper's ablations."""

    name: str = setting("full", choices=("full", "half", "one_tower"))
    num_classes: Any = setting("${data.num_classes}", auto=True, ge=2)
    geometry: str = setting("224", choices=GEOMETRIES)     # 224: cuda-convnet's padding; 227: Caffe's crop
    lrn: str = setting("paper", choices=LRN_CHOICES)
    init: str = setting("paper", choices=INITS)
    pool: str = setting("overlap", choices=tuple(POOLINGS))
    dropout: float = setting(0.5, ge=0, lt=1, means="a drop probability in [0, 1)")
    remove: Optional[str] = setting(None, choices=(None, *REMOVABLE))


@dataclass
class OptimConfig:
    """Sec. 5: SGD with momentum and weight decay; the bias options are Caffe's."""

    lr: float = setting(0.01, gt=0)
    momentum: float = setting(0.9, ge=0)
    weight_decay: float = setting(0.0005, ge=0)
    rule: str = setting("pytorch", choices=("pytorch", "paper"))
    bias_decay: bool = True
    bias_lr_mult: float = setting(1.0, gt=0)


@dataclass
class ScheduleConfig:
    """Sec. 5: divide the rate by 10 when validation error stops improving."""

    factor: float = setting(0.1, gt=0, lt=1)
    patience: int = setting(2, ge=0)
    threshold: float = setting(0.001, ge=0)
    max_drops: int = setting(3, ge=0)
    warmup_steps: int = setting(0, ge=0)


@dataclass
class CommConfig:
    overlap: bool = True  # crossing layers compute their own tower's part while the other's arrives


@dataclass
class CheckpointConfig:
    every_steps: int = setting(0, ge=0)
    every_epochs: int = setting(1, ge=1)  # and after every Nth epoch and the last (many short runs on one disk)
    keep: int = setting(2, ge=0)


@dataclass
class DebugConfig:
    check_batches: bool = False
    kill_at_step: int = setting(0, ge=0)
    kill_rank: int = -1
    max_steps: int = setting(0, ge=0)


@dataclass
class TrainConfig:
    """One training run (``conf/config.yaml``)."""

    model: ModelConfig = setting(MISSING)
    data: DataConfig = setting(MISSING)
    scheme: SchemeConfig = setting(factory=SchemeConfig)  # how the net is split over the processes
    optim: OptimConfig = setting(factory=OptimConfig)
    schedule: ScheduleConfig = setting(factory=ScheduleConfig)
    seed: int = setting(0, ge=0)
    epochs: int = setting(6, ge=1, resume=MAY_CHANGE)
    batch_size: int = setting(64, ge=1)
    device: str = setting("auto", choices=DEVICES, resume=MAY_CHANGE)
    threads: int = setting(1, ge=1, resume=MAY_CHANGE)
    # auto: continue when the run directory holds a checkpoint, else start
    resume: Any = setting(False, choices=(True, False, "auto"), resume=MAY_CHANGE)
    dist_timeout_s: float = setting(300.0, gt=0, resume=MAY_CHANGE)
    dist_backend: str = setting("auto", choices=BACKENDS, resume=MAY_CHANGE)
    deterministic: bool = setting(False, resume=MAY_CHANGE)
    # How fast, not what (README, "Speed"): each may change when a run is resumed.
    precision: str = setting("fp32", choices=("fp32", "bf16"), resume=MAY_CHANGE)
    channels_last: bool = setting(False, resume=MAY_CHANGE)
    compile: bool = setting(False, resume=MAY_CHANGE)
    compile_mode: str = setting("default", choices=COMPILE_MODES, resume=MAY_CHANGE)
    cudnn_benchmark: bool = setting(False, resume=MAY_CHANGE)
    tf32: bool = setting(False, resume=MAY_CHANGE)
    profile: bool = setting(False, resume=MAY_CHANGE)
    comm: CommConfig = setting(factory=CommConfig, resume=MAY_CHANGE)
    checkpoint: CheckpointConfig = setting(factory=CheckpointConfig, resume=MAY_CHANGE)
    log_every_steps: int = setting(10, ge=1, resume=MAY_CHANGE)
    progress: bool = setting(True, resume=MAY_CHANGE)
    debug: DebugConfig = setting(factory=DebugConfig, resume=MAY_CHANGE)


# Every data group's keys that may change, with the trainer's own ("data." before the group's).
RESUME_MAY_CHANGE = resume_may_change(TrainConfig) + tuple(
    f"data.{k}" for k in resume_may_change(SyntheticData, ImageFolderData, PreparedData))


def store(cs) -> None:
    cs.store(name="base_train", node=TrainConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="optim", name="base_sgd", node=OptimConfig)
    cs.store(group="schedule", name="base_plateau", node=ScheduleConfig)
