"""The schema of ``bench_1gpu_vs_2gpu.py`` (``conf/bench.yaml``): the paper's half net against the
two-tower net (sec. 3.2).

The benchmark's entry point registers it in Hydra's ConfigStore (:func:`register`) before
composing ``conf/bench.yaml``, whose defaults list names it (``- base_bench``): the product's
schema (:mod:`alexnet_mp.config`) knows nothing of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from alexnet_mp.config.data import DataConfig
from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import COMPILE_MODES, DEVICES, CommConfig
from alexnet_mp.net.arch import GEOMETRIES

__all__ = ["BenchConfig", "register"]


@dataclass
class BenchConfig:
    data: DataConfig = MISSING
    device: str = setting("auto", choices=DEVICES)
    output_dir: str = "outputs/benchmarks"  # benchmarks/results (the published figures) only when asked
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


def register() -> None:
    """Store the schema as ``base_bench`` (idempotent)."""
    ConfigStore.instance().store(name="base_bench", node=BenchConfig)
