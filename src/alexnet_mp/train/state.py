"""The run state (sec. 5): the model, its optimizer and schedule, the RNG streams and the
position reached, everything a checkpoint holds through ``RunState.state_dict`` /
``load_state_dict``; and ``Speed``, how the step runs (not what it computes).
``build_run_state`` makes it from the typed model, optimizer and schedule configs
(:class:`alexnet_mp.config.train.ModelConfig`, ``OptimConfig``, ``ScheduleConfig``)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from alexnet_mp.config.train import TrainConfig
from alexnet_mp.errors import UserError
from alexnet_mp.parallel import ranks
from alexnet_mp.net.arch import arch_options
from alexnet_mp.net.model import AlexNet, build_model
from alexnet_mp.train.optim import PlateauSchedule, optimizer_for, scale_rates, schedule_for
from alexnet_mp.parallel.data_parallel import check_data, parallelize_data
from alexnet_mp.parallel.hybrid import HybridNet, check_hybrid, parallelize_hybrid
from alexnet_mp.parallel.towers import parallelize
from alexnet_mp.parallel.placement import Placement

if TYPE_CHECKING:
    from alexnet_mp.config.scheme import SchemeConfig
    from alexnet_mp.config.train import ModelConfig, OptimConfig, ScheduleConfig

__all__ = ["Position", "Speed", "RunState", "build_run_state"]


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Position:
    """Where the run is: epoch, batch within it, optimizer steps, and the epoch's running totals."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    epoch_loss: float = 0.0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    data_seconds: float = 0.0  # of epoch_seconds, waiting for the loader
    skipped: int = 0

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss, self.epoch_images, self.epoch_seconds, self.data_seconds, self.skipped = 0.0, 0, 0.0, 0.0, 0


@dataclass(frozen=True)
class Speed:
    """How the step runs, not what it computes (within float tolerance). Recorded in the run's
    config and in every benchmark result.

    ``precision``: ``fp32``, or ``bf16`` autocast (convolutions and matmuls in bfloat16; LRN,
    softmax and the loss in fp32, where bf16 would hurt). ``channels_last``: NHWC activations
    (faster convolutions on tensor cores). ``compile``: ``torch.compile`` of the net (a tower's
    collectives are graph breaks). ``cudnn_benchmark``: let cuDNN time its algorithms.
    ``tf32``: TF32 matmuls and convolutions on Ampere and later GPUs; off by default, so fp32
    means fp32 (PyTorch's own defaults differ: on for convolutions, off for matmuls).
    ``compile_mode``: torch.compile's mode (:data:`alexnet_mp.config.train.COMPILE_MODES`); ``reduce-overhead`` adds
    CUDA graphs, which take the kernel launches off the host. ``deterministic``: the same
    numbers on every run (``torch.use_deterministic_algorithms``, deterministic cuDNN): kernels
    built on atomics otherwise round differently from run to run.

    The defaults are the training config's (:class:`alexnet_mp.config.train.TrainConfig`), whose
    keys of the same names :meth:`from_config` reads.
    """

    precision: str = TrainConfig.precision
    channels_last: bool = TrainConfig.channels_last
    compile: bool = TrainConfig.compile
    cudnn_benchmark: bool = TrainConfig.cudnn_benchmark
    tf32: bool = TrainConfig.tf32
    compile_mode: str = TrainConfig.compile_mode
    deterministic: bool = TrainConfig.deterministic

    KEYS: ClassVar[tuple[str, ...]]  # the fields' names (set below the class)

    @classmethod
    def from_config(cls, cfg: Any) -> "Speed":
        return cls(**{k: cfg.get(k, getattr(cls, k)) for k in cls.KEYS})

    @property
    def cuda_graphs(self) -> bool:
        return self.compile and self.compile_mode == "reduce-overhead"

    def apply_backends(self) -> None:
        """The process-wide switches: TF32 and cuDNN's algorithm search."""
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark and not self.deterministic
        torch.backends.cudnn.deterministic = self.deterministic
        if self.deterministic:  # cuBLAS reads it when it starts: deterministic matmul workspaces
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(self.deterministic)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


Speed.KEYS = tuple(f.name for f in fields(Speed))


class RunState:
    """The model (a tower or the whole net), its optimizer and schedule, the RNG and the
    position: everything a checkpoint holds, through ``state_dict`` / ``load_state_dict``.

    The step's loss is summed on the device (``loss_sum``, ``loss_images``) and read only
    by :meth:`flush_loss`, every ``log_every_steps`` and at checkpoints: reading it every
    step would make the host wait for the device.
    """

    def __init__(self, model: AlexNet | HybridNet, optimizer: torch.optim.Optimizer, schedule: PlateauSchedule,
                 device: torch.device, speed: Speed = Speed(), placement: Placement | None = None,
                 fc_update: str = "step"):
        self.model, self.optimizer, self.schedule, self.device, self.speed = model, optimizer, schedule, device, speed
        self.replicas = placement.replicas if placement else 1
        self.replica_group = placement.replica_group if placement else None
        # scheme=hybrid: the model is this process's part, trained by its own step (train.step).
        self.hybrid = isinstance(model, HybridNet)
        self.fc_update = fc_update
        forward: torch.nn.Module = model
        if self.replicas > 1 and not self.hybrid:
            # Gradients averaged over the replicas, bucketed and overlapped with the backward
            # pass. Every replica starts from the same weights (same seed, or the same shard).
            forward = parallelize_data(model, self.replica_group)
        # The compiled net shares its parameters with ``model``, which the checkpoints hold.
        self.forward = torch.compile(forward, mode=speed.compile_mode) if speed.compile else forward
        self.position = Position()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_images = 0

    def flush_loss(self) -> float | None:
        """Move the device's loss sum into the position (one host read); returns the mean
        loss since the last flush, or None when no step ran since."""
        if not self.loss_images:
            return None
        # Each replica's loss is its rows' mean: the global batch's is the sum over replicas.
        total = float(ranks.sum_over(self.loss_sum, self.replica_group))
        mean = total / (self.loss_images * self.replicas)
        self.position.epoch_loss += total
        self.loss_sum.zero_()
        self.loss_images = 0
        return mean

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The net's fp32 logits for a batch on the device, with the speed options applied."""
        if self.speed.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = self.speed.autocast_dtype
        if self.speed.cuda_graphs and self.device.type == "cuda":
            # A new step: the graphs may overwrite the outputs of the last replay, which are used up.
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            logits = self.forward(images)
        return logits.float()  # softmax and the loss in fp32

    def autocast(self) -> contextlib.AbstractContextManager:
        """The speed options' autocast (bf16), or nothing."""
        dtype = self.speed.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def state_dict(self) -> dict:
        self.flush_loss()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": _rng_state(self.device),
                "position": dict(vars(self.position))}

    def load_state_dict(self, shard: dict) -> None:
        self.model.load_state_dict(shard["model"])
        self.optimizer.load_state_dict(shard["optimizer"])
        self.schedule.load_state_dict(shard["schedule"])
        _set_rng_state(shard["rng"], self.device)
        self.position = Position(**{"data_seconds": 0.0, **shard["position"]})


def build_run_state(model_cfg: ModelConfig, optim_cfg: OptimConfig, schedule_cfg: ScheduleConfig, *,
                    num_classes: int, input_size: int, seed: int, device: torch.device, speed: Speed = Speed(),
                    overlap: bool = True, placement: Placement | None = None, scheme: SchemeConfig | None = None,
                    batch_size: int | None = None) -> RunState:
    """The net from ``seed`` (the same weights on every rank; a tower keeps its share), on
    ``device``, with the optimizer and schedule of sec. 5, from the schema's typed configs
    (the composed config's nodes as ``OmegaConf.to_object`` gives them, or built directly).

    ``placement`` says how many towers (its ``tower_group`` holds them) and replicas this
    process belongs to; None is one process holding the whole net. ``scheme`` (None: the
    towers): ``data`` wraps the net when the state is made (:class:`RunState`); ``hybrid``
    splits it here (:func:`alexnet_mp.parallel.hybrid.parallelize_hybrid`)."""
    name = scheme.name if scheme is not None else "towers"
    k = placement.world_size if placement is not None and name != "towers" else 1
    torch.manual_seed(seed)
    model = build_model(model_cfg.name, num_classes=num_classes, input_size=input_size, init=model_cfg.init,
                        **arch_options(model_cfg))
    if k > 1 and batch_size is not None:
        check_data(k, batch_size)
    if name == "hybrid" and k > 1:
        check_hybrid(model.spec, k, batch_size, fc8=scheme.fc8)
        if speed.compile:
            raise UserError("compile=true is not supported with scheme=hybrid (its passes run their own collectives)")
        model = parallelize_hybrid(model, group=placement.replica_group, device=device, fc8=scheme.fc8)
    elif placement is not None and placement.towers == 2:
        model = parallelize(model, group=placement.tower_group, device=device, overlap=overlap)
    else:
        model = model.to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    speed.apply_backends()
    optimizer = optimizer_for(model, optim_cfg)
    if k > 1 and scheme.lr_scaling == "convnet2":
        # cuda-convnet2's parameter files for K GPUs: every rate x K for the K-times batch; the
        # hybrid with per-pass updates keeps the fc rates (each pass carries 1/K of the batch).
        per_pass = name == "hybrid" and scheme.fc_update == "pass"
        fc = {id(p) for p in model.fc_parameters()} if per_pass else set()
        scale_rates(optimizer, lambda p: 1.0 if id(p) in fc else float(k))
    schedule = schedule_for(optimizer, schedule_cfg)
    torch.manual_seed(seed + 1)  # dropout's stream, saved and restored with the checkpoint
    return RunState(model, optimizer, schedule, device, speed, placement,
                    fc_update=scheme.fc_update if scheme is not None else "step")

