"""The schema of ``bench_launcher_death.py`` (``conf/bench_launcher_death.yaml``): how long
workers outlive their killed launcher.

The benchmark's entry point registers it in Hydra's ConfigStore (:func:`register`) before
composing ``conf/bench_launcher_death.yaml``, whose defaults list names it (``- base_bench_launcher_death``): the product's
schema (:mod:`alexnet_mp.config`) knows nothing of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore

from alexnet_mp.config.schema import setting

__all__ = ["BenchLauncherDeathConfig", "register"]


@dataclass
class BenchLauncherDeathConfig:
    kills: int = setting(6, ge=1)
    delay_step_s: float = setting(0.3, ge=0)
    run_root: Optional[str] = None
    output_dir: str = "outputs/benchmarks"  # benchmarks/results (the published figures) only when asked


def register() -> None:
    """Store the schema as ``base_bench_launcher_death`` (idempotent)."""
    ConfigStore.instance().store(name="base_bench_launcher_death", node=BenchLauncherDeathConfig)
