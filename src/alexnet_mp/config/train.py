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

from alexnet_mp.net.arch import ARCH_DEFAULTS, GEOMETRIES, INITS, LRN_CHOICES, POOLINGS, REMOVABLE
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
    """The full two-tower net or the one-GPU half net (sec. 3.2), and the paper's ablations. The
    architecture's defaults (the paper's values) are :data:`alexnet_mp.net.arch.ARCH_DEFAULTS`,
    which also fills in checkpoints written before a switch existed."""

    name: str = setting("full", choices=("full", "half", "one_tower"))
    num_classes: Any = setting("${data.num_classes}", auto=True, ge=2)
    # 224: cuda-convnet's implicit bottom/right zero padding; 227: Caffe's crop
    geometry: str = setting(ARCH_DEFAULTS["geometry"], choices=GEOMETRIES)
    # paper: the printed formula (alpha 5e-4 in PyTorch's convention); cuda-convnet: alpha 1e-4; none: no LRN
    lrn: str = setting(ARCH_DEFAULTS["lrn"], choices=LRN_CHOICES)
    # paper: N(0, 0.01), biases 1 in conv2/4/5, fc6/7 (sec. 5); he: see docs/training.md, Deviations
    init: str = setting("paper", choices=INITS)
    # The paper's ablations (conf/ablation/ has them as presets, e.g. +ablation=no_lrn):
    # overlap: 3x3, stride 2 (sec. 3.4); 2x2: stride 2
    pool: str = setting(ARCH_DEFAULTS["pool"], choices=tuple(POOLINGS))
    # after fc6, fc7; 0: none
    dropout: float = setting(ARCH_DEFAULTS["dropout"], ge=0, lt=1, means="a drop probability in [0, 1)")
    # a middle conv layer left out (sec. 7)
    remove: Optional[str] = setting(ARCH_DEFAULTS["remove"], choices=(None, *REMOVABLE))


@dataclass
class OptimConfig:
    """Sec. 5: SGD with momentum and weight decay; the bias options are Caffe's."""

    lr: float = setting(0.01, gt=0)
    momentum: float = setting(0.9, ge=0)
    weight_decay: float = setting(0.0005, ge=0)
    # pytorch: torch.optim.SGD; paper: v <- 0.9v - 0.0005*lr*w - lr*grad, w <- w + v
    rule: str = setting("pytorch", choices=("pytorch", "paper"))
    # Biases, where sources differ: the paper states one decay and one rate for every parameter
    # (the defaults); Caffe's bvlc_alexnet gives biases no decay and twice the rate.
    bias_decay: bool = True                  # false: no weight decay on biases (Caffe's decay_mult 0)
    bias_lr_mult: float = setting(1.0, gt=0)  # 2.0: Caffe's doubled bias learning rate


@dataclass
class ScheduleConfig:
    """Sec. 5: divide the rate by 10 when validation error stops improving."""

    factor: float = setting(0.1, gt=0, lt=1)
    patience: int = setting(2, ge=0)          # epochs without improvement in top-1 error before a drop
    threshold: float = setting(0.001, ge=0)   # an improvement smaller than this (absolute error) does not count
    max_drops: int = setting(3, ge=0)         # the paper dropped the rate 3 times
    warmup_steps: int = setting(0, ge=0)      # linear warm-up of the rate over the first steps (not in the paper)


@dataclass
class CommConfig:
    overlap: bool = True  # crossing layers compute their own tower's part while the other's arrives


@dataclass
class CheckpointConfig:
    every_steps: int = setting(0, ge=0)   # also save every N optimizer steps (0: only at the end of each epoch)
    # save at the end of every Nth epoch and of the last (a stop signal saves anyway)
    every_epochs: int = setting(1, ge=1)
    keep: int = setting(2, ge=0)          # checkpoints kept on disk


@dataclass
class DebugConfig:
    check_batches: bool = False  # assert every step that both towers got bit-identical batches (a tiny all-gather)
    # stop after this many optimizer steps in total, saving a checkpoint to resume from (0: no limit)
    max_steps: int = setting(0, ge=0)


@dataclass
class TrainConfig:
    """One training run (``conf/config.yaml``)."""

    model: ModelConfig = setting(MISSING)
    data: DataConfig = setting(MISSING)
    scheme: SchemeConfig = setting(factory=SchemeConfig)  # how the net is split over the processes
    optim: OptimConfig = setting(factory=OptimConfig)
    schedule: ScheduleConfig = setting(factory=ScheduleConfig)
    seed: int = setting(0, ge=0)              # weights, dropout and the data order all follow from it
    epochs: int = setting(6, ge=1, resume=MAY_CHANGE)
    batch_size: int = setting(64, ge=1)       # the global batch (the paper: 128)
    # auto: a GPU per rank when there are GPUs (docs/gpu.md), else the CPU
    device: str = setting("auto", choices=DEVICES, resume=MAY_CHANGE)
    threads: int = setting(1, ge=1, resume=MAY_CHANGE)  # CPU threads per process (two towers share a 2-core machine)
    # true: continue from the newest good checkpoint (an error when there is none); auto: the same,
    # and start fresh when there is none
    resume: Any = setting(False, choices=(True, False, "auto"), resume=MAY_CHANGE)
    # a collective waiting this long for a lost process fails instead of hanging
    dist_timeout_s: float = setting(300.0, gt=0, resume=MAY_CHANGE)
    # auto (NCCL on GPUs, gloo on the CPU), nccl or gloo (gloo also on GPUs: two ranks may share one)
    dist_backend: str = setting("auto", choices=BACKENDS, resume=MAY_CHANGE)
    # the same numbers every run (deterministic algorithms and cuDNN; slower)
    deterministic: bool = setting(False, resume=MAY_CHANGE)
    # How fast, not what (docs/speed.md): each may change when a run is resumed.
    # fp32, or bf16 (autocast: convolutions and matmuls in bfloat16; LRN, softmax and loss in fp32)
    precision: str = setting("fp32", choices=("fp32", "bf16"), resume=MAY_CHANGE)
    channels_last: bool = setting(False, resume=MAY_CHANGE)  # NHWC activations (faster convolutions on tensor cores)
    compile: bool = setting(False, resume=MAY_CHANGE)  # torch.compile the net (a tower's collectives are graph breaks)
    compile_mode: str = setting("default", choices=COMPILE_MODES, resume=MAY_CHANGE)  # with compile
    cudnn_benchmark: bool = setting(False, resume=MAY_CHANGE)  # let cuDNN time its convolution algorithms
    tf32: bool = setting(False, resume=MAY_CHANGE)  # TF32 on Ampere+ GPUs; false: fp32 is fp32
    # trace every collective (bytes, seconds; synchronises a GPU around each; for profiling only)
    profile: bool = setting(False, resume=MAY_CHANGE)
    comm: CommConfig = setting(factory=CommConfig, resume=MAY_CHANGE)
    checkpoint: CheckpointConfig = setting(factory=CheckpointConfig, resume=MAY_CHANGE)
    log_every_steps: int = setting(10, ge=1, resume=MAY_CHANGE)  # progress bar / TensorBoard update interval
    progress: bool = setting(True, resume=MAY_CHANGE)  # tqdm progress bar on rank 0
    debug: DebugConfig = setting(factory=DebugConfig, resume=MAY_CHANGE)


# Every data group's keys that may change, with the trainer's own ("data." before the group's).
RESUME_MAY_CHANGE = resume_may_change(TrainConfig) + tuple(
    f"data.{k}" for k in resume_may_change(SyntheticData, ImageFolderData, PreparedData))


def store(cs) -> None:
    cs.store(name="base_train", node=TrainConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="optim", name="base_sgd", node=OptimConfig)
    cs.store(group="schedule", name="base_plateau", node=ScheduleConfig)
