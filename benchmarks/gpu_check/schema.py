"""The schema of the device check, ``gpu_check.py`` and ``gpu_profile.py`` (``conf/gpu_check.yaml``).

The benchmark's entry point registers it in Hydra's ConfigStore (:func:`register`) before
composing ``conf/gpu_check.yaml``, whose defaults list names it (``- base_gpu_check``): the product's
schema (:mod:`alexnet_mp.config`) knows nothing of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from alexnet_mp.config.schema import setting

__all__ = ["GpuCheckConfig", "register"]


@dataclass
class GpuCheckConfig:
    device: str = setting("cuda", choices=("cuda", "cpu"))
    batches: List[int] = setting(factory=lambda: [128, 512])
    precisions: List[str] = setting(factory=lambda: ["fp32", "bf16"])
    compile: List[bool] = setting(factory=lambda: [False, True])
    compile_modes: List[str] = setting(factory=lambda: ["reduce-overhead", "default"])
    tf32: bool = False
    warmup: int = setting(5, ge=0)
    steps: int = setting(20, ge=1)
    matmul_size: int = setting(8192, ge=1)
    deadline_s: float = setting(150.0, gt=0)
    skip_steps: bool = False
    lrn_batch: int = setting(128, ge=0)
    lrn_compile: bool = True
    images: Optional[str] = None  # real JPEG photographs for the data part; none: that part is skipped, and says so
    data_images: int = setting(8000, ge=1)
    data_batch: int = setting(128, ge=1)
    data_epochs: int = setting(3, ge=1)
    data_precision: str = setting("bf16", choices=("fp32", "bf16"))
    skip_data: bool = False
    skip_two: bool = False
    train_steps: int = setting(100, ge=1)
    kill_at: int = setting(57, ge=1)
    two_batch: int = setting(128, ge=1)
    two_steps: int = setting(10, ge=1)
    two_deadline_s: float = setting(200.0, gt=0)
    run_timeout_s: float = setting(150.0, gt=0)
    variants: List[str] = setting(factory=lambda: ["eager", "compile", "reduce-overhead", "eager-nondeterministic"])
    output_dir: str = "outputs/benchmarks"  # benchmarks/results (the published figures) only when asked


def register() -> None:
    """Store the schema as ``base_gpu_check`` (idempotent)."""
    ConfigStore.instance().store(name="base_gpu_check", node=GpuCheckConfig)
