"""The schema of ``launch/reproduce.py`` (``conf/reproduce.yaml``): the paper's comparisons
(the full net, the half net, the ablations of secs. 3.3-7) trained and evaluated per seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from alexnet_mp.config.data import DataConfig
from alexnet_mp.config.schema import setting
from alexnet_mp.config.train import DEVICES

LAUNCHERS = ("local", "submitit_local", "slurm")  # who runs each training run (alexnet_mp.paper.reproduce.submit)

__all__ = ["ReproduceConfig", "SlurmConfig", "LAUNCHERS", "store"]


@dataclass
class SlurmConfig:
    """``launcher=slurm``: what each run's sbatch asks for (docs/slurm-sweep.md)."""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_min: int = setting(4320, ge=1)       # per job attempt; a job stopped at the limit is requeued
    gpus_full: int = setting(2, ge=1)         # a two-tower run's GPUs (the half net gets 1)
    cpus_per_gpu: int = setting(8, ge=1)
    mem: Optional[str] = None
    signal_delay_s: int = setting(120, ge=1)  # the warning signal this long before the limit
    save_wait_s: float = setting(60.0, ge=0)  # how long a signalled job waits for the trainer's save
    max_requeues: int = setting(10, ge=0)
    setup: List[str] = setting(factory=list)  # shell lines before the job starts
    extra: List[str] = setting(factory=list)  # more sbatch lines
    wait: bool = True                         # false: submit and exit; run again to collect


@dataclass
class ReproduceConfig:
    data: DataConfig = MISSING
    configs: List[str] = setting(factory=lambda: ["full", "half", "no_lrn", "pool_2x2", "no_pca", "no_dropout",
                                                  "no_conv4"])
    seeds: List[int] = setting(factory=lambda: [0, 1, 2])
    ablation_seeds: int = setting(2, ge=1)
    epochs: int = setting(4, ge=1)
    train_overrides: List[str] = setting(factory=lambda: ["progress=false"])
    full_processes: int = setting(1, choices=(1, 2), means="1 (one process, groups=2) or 2 (one tower each)")
    threads: int = setting(1, ge=1)
    parallel: Any = setting("auto", auto=True, ge=1)
    device: str = setting("auto", choices=DEVICES)
    workers: Any = setting(0, auto=True, ge=0)
    prepare: bool = True
    sweep_dir: str = "outputs/reproduce"
    launcher: str = setting("local", choices=LAUNCHERS)
    slurm: SlurmConfig = setting(factory=SlurmConfig)
    output_dir: str = "outputs/reproduce"     # reproduce.{json,md,png}; results: the committed report
    output_name: str = "reproduce"
    report_only: bool = False                 # write the report of the finished runs; train nothing


def store(cs) -> None:
    cs.store(name="base_reproduce", node=ReproduceConfig)
