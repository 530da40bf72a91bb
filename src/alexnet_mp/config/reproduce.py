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
    partition: Optional[str] = None           # sbatch --partition
    account: Optional[str] = None             # sbatch --account
    qos: Optional[str] = None                 # sbatch --qos
    constraint: Optional[str] = None          # sbatch --constraint (e.g. a GPU type)
    # minutes per job attempt; a job stopped at the limit is requeued and resumes (also bounds submitit_local's jobs)
    time_min: int = setting(4320, ge=1)
    gpus_full: int = setting(2, ge=1)         # a two-tower run's GPUs (one tower per GPU); the half net gets 1
    cpus_per_gpu: int = setting(8, ge=1)      # CPUs per GPU (data loading): cpus-per-task = this x the job's GPUs
    mem: Optional[str] = None                 # sbatch --mem, e.g. 64G (null: the partition's default)
    signal_delay_s: int = setting(120, ge=1)  # the warning signal this long before the limit: save, then requeue
    save_wait_s: float = setting(60.0, ge=0)  # how long a signalled job waits for the trainer's save
    # time-limit requeues per run (preemptions are not counted by submitit; also bounds submitit_local's jobs)
    max_requeues: int = setting(10, ge=0)
    setup: List[str] = setting(factory=list)  # shell lines before the job starts, e.g. ["module load cuda/12.4"]
    extra: List[str] = setting(factory=list)  # more sbatch lines, e.g. ["--qos=high", "--exclusive"]
    wait: bool = True                         # false: submit and exit; run again to collect


@dataclass
class ReproduceConfig:
    data: DataConfig = MISSING
    configs: List[str] = setting(factory=lambda: ["full", "half", "no_lrn", "pool_2x2", "no_pca", "no_dropout",
                                                  "no_conv4"])
    seeds: List[int] = setting(factory=lambda: [0, 1, 2])  # full and half on every seed
    ablation_seeds: int = setting(2, ge=1)    # the ablations on the first N seeds
    epochs: int = setting(4, ge=1)            # per run; the trainer's short recipe otherwise (conf/config.yaml)
    # Passed verbatim to launch/train.py after everything else. Half the trainer's short-run rate, warmed
    # up over 156 steps (one epoch of 10,000 images at batch 64): at the trainer's 0.002 and 60 steps, the
    # nets without LRN and with 2x2 pooling collapsed to chance on CIFAR-10 in their first epoch (all ReLUs
    # dead), which would measure a training failure, not the paper's effect. Every configuration gets the
    # same recipe.
    train_overrides: List[str] = setting(factory=lambda: ["progress=false", "optim.lr=0.001",
                                                          "schedule.warmup_steps=156"])
    # 1: the full net in one process (groups=2; the same function as the two towers, tests prove it);
    # 2: one tower per process under torchrun
    full_processes: int = setting(1, choices=(1, 2), means="1 (one process, groups=2) or 2 (one tower each)")
    threads: int = setting(1, ge=1)           # CPU threads per training process
    parallel: Any = setting("auto", auto=True, ge=1)  # runs side by side; auto: the cores over each run's threads
    device: str = setting("auto", choices=DEVICES)
    workers: Any = setting(0, auto=True, ge=0)  # loader workers per run (data.workers); 0: in the training process
    prepare: bool = True                      # data=imagefolder: prepare the images once into the sweep folder
    sweep_dir: str = "outputs/reproduce"      # one folder per run, and its result.json
    # local: runs as subprocesses here; submitit_local: submitit's local executor; slurm: one Slurm job per
    # run (docs/slurm-sweep.md); the state in sweep_dir/sweep-state.json
    launcher: str = setting("local", choices=LAUNCHERS)
    slurm: SlurmConfig = setting(factory=SlurmConfig)
    output_dir: str = "outputs/reproduce"     # reproduce.{json,md,png}; results: the committed report
    output_name: str = "reproduce"
    report_only: bool = False                 # write the report of the finished runs; train nothing


def store(cs) -> None:
    cs.store(name="base_reproduce", node=ReproduceConfig)
