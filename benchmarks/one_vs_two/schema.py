"""The schemas of the benchmarks: ``benchmarks/bench_1gpu_vs_2gpu.py`` (``conf/bench.yaml``:
the paper's half net against the two-tower net, sec. 3.2), ``benchmarks/bench_data.py``
(``conf/bench_data.yaml``: images/s of each data path), ``benchmarks/bench_comm_wait.py``
(``conf/bench_comm_wait.yaml``: what the exchange's tracer counts as waited),
``benchmarks/bench_launcher_death.py`` (``conf/bench_launcher_death.yaml``: how long workers
outlive their killed launcher) and
``benchmarks/gpu_check.py`` with ``gpu_profile.py`` (``conf/gpu_check.yaml``: the device check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from alexnet_mp.net.arch import GEOMETRIES
from alexnet_mp.config.data import DataConfig
from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import COMPILE_MODES, DEVICES, CommConfig

__all__ = ["BenchConfig", "BenchDataConfig", "BenchCommWaitConfig", "BenchLauncherDeathConfig", "GpuCheckConfig", "store"]


@dataclass
class BenchConfig:
    data: DataConfig = MISSING
    device: str = setting("auto", choices=DEVICES)
    output_dir: str = "benchmarks/results"
    devices: int = setting(0, ge=0)            # N > 0: also time N-device data parallelism (even N)
    skip_time: bool = False
    batch: int = setting(128, ge=1)
    input_size: int = setting(224, ge=1)
    geometry: str = setting("224", choices=GEOMETRIES)
    num_classes: int = setting(1000, ge=2)
    warmup_steps: int = setting(2, ge=0)
    timed_steps: int = setting(8, ge=1)
    rounds: int = setting(1, ge=1)
    threads: int = setting(1, ge=1)
    peak_matmul_size: Any = setting("auto", auto=True, ge=1)
    peak_matmul_seconds: float = setting(1.5, gt=0)
    precision: str = setting("fp32", choices=("fp32", "bf16"))
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = setting("default", choices=COMPILE_MODES)
    cudnn_benchmark: bool = False
    tf32: bool = False
    comm: CommConfig = setting(factory=CommConfig)
    skip_error: bool = False
    seeds: List[int] = setting(factory=lambda: [0])
    epochs: int = setting(10, ge=1)
    train_overrides: List[str] = setting(factory=lambda: ["progress=false"])
    eval_overrides: List[str] = setting(factory=lambda: ["progress=false"])
    timing_from: Optional[str] = None         # a benchmark result's JSON: its time part, not measured again
    error_from: Optional[str] = None          # a reproduce report's JSON: its full and half nets' errors


@dataclass
class BenchDataConfig:
    images: str = "../shared/data/imagenet-sample"
    image_size: int = setting(256, ge=1)
    crop: int = setting(224, ge=1)
    batch: int = setting(32, ge=1)
    max_images: int = setting(200, ge=1)
    repeats: int = setting(3, ge=1)
    skip_train: bool = False
    train_batch: int = setting(32, ge=1)
    work_dir: Optional[str] = None
    output_dir: str = "benchmarks/results"


@dataclass
class BenchCommWaitConfig:
    steps: int = setting(5, ge=1)
    batch: int = setting(4, ge=1)
    input_size: int = setting(67, ge=1)
    num_classes: int = setting(7, ge=2)
    tolerance: float = setting(0.05, gt=0)
    output_dir: str = "benchmarks/results"


@dataclass
class BenchLauncherDeathConfig:
    kills: int = setting(6, ge=1)
    delay_step_s: float = setting(0.3, ge=0)
    run_root: Optional[str] = None
    output_dir: str = "benchmarks/results"


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
    images: str = "../shared/data/imagenet-sample"
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
    output_dir: str = "benchmarks/results"


def store(cs) -> None:
    cs.store(name="base_bench", node=BenchConfig)
    cs.store(name="base_bench_data", node=BenchDataConfig)
    cs.store(name="base_bench_comm_wait", node=BenchCommWaitConfig)
    cs.store(name="base_bench_launcher_death", node=BenchLauncherDeathConfig)
    cs.store(name="base_gpu_check", node=GpuCheckConfig)
