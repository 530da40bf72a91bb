"""The schema of ``bench_schemes.py`` (``conf/bench_schemes.yaml``): the three schemes side by side.

The benchmark's entry point registers it in Hydra's ConfigStore (:func:`register`) before composing
``conf/bench_schemes.yaml``, whose defaults list names it (``- base_bench_schemes``): the product's
schema (:mod:`alexnet_mp.config`) knows nothing of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from hydra.core.config_store import ConfigStore

from alexnet_mp.config.schema import setting

__all__ = ["BenchSchemesConfig", "register"]


@dataclass
class BenchSchemesConfig:
    model: str = setting("full", choices=("full", "half", "one_tower"))
    ks: List[int] = setting(factory=lambda: [2, 4])  # process counts timed, each beside one process
    batch: int = setting(16, ge=1)                   # the global batch of every configuration
    input_size: int = setting(67, ge=67)             # the smallest input the net takes: a short CPU run
    num_classes: int = setting(1000, ge=2)
    fc8: str = setting("one", choices=("one", "split"))  # the hybrid's fc8 (parallel/hybrid.py)
    warmup: int = setting(1, ge=0)                   # untimed steps before each timed run
    steps: int = setting(1, ge=1)                    # timed steps of each run
    repeats: int = setting(3, ge=1)                  # runs of each configuration, interleaved; the median is reported
    calibration_mb: float = setting(0.0, ge=0)       # the all-reduce measuring the gloo link; 0: the net's gradients
    table_ks: List[int] = setting(factory=lambda: [2, 4, 8])  # the bytes table at 224 px
    output_dir: str = "outputs/benchmarks"           # benchmarks/results (the published figures) only when asked


def register() -> None:
    """Store the schema as ``base_bench_schemes`` (idempotent)."""
    ConfigStore.instance().store(name="base_bench_schemes", node=BenchSchemesConfig)
