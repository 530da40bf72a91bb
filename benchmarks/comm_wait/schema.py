"""The schema of ``bench_comm_wait.py`` (``conf/bench_comm_wait.yaml``): what the exchange's
tracer counts as waited.

The benchmark's entry point registers it in Hydra's ConfigStore (:func:`register`) before
composing ``conf/bench_comm_wait.yaml``, whose defaults list names it (``- base_bench_comm_wait``): the product's
schema (:mod:`alexnet_mp.config`) knows nothing of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from alexnet_mp.config.schema import setting

__all__ = ["BenchCommWaitConfig", "register"]


@dataclass
class BenchCommWaitConfig:
    steps: int = setting(5, ge=1)
    batch: int = setting(4, ge=1)
    input_size: int = setting(67, ge=1)
    num_classes: int = setting(7, ge=2)
    tolerance: float = setting(0.05, gt=0)
    output_dir: str = "outputs/benchmarks"  # benchmarks/results (the published figures) only when asked


def register() -> None:
    """Store the schema as ``base_bench_comm_wait`` (idempotent)."""
    ConfigStore.instance().store(name="base_bench_comm_wait", node=BenchCommWaitConfig)
