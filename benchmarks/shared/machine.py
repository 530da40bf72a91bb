"""What several benchmarks share about the machine they measure: where the repository is,
the CPU's name, waiting for a device, the device's matmul peak (the denominator of every MFU
here), the paper's recipe the device check trains with, and a torchrun's workers. (A free port for a process group
is :func:`alexnet_mp.parallel.placement.free_port`; the relative difference of two tensors
:func:`benchmarks.shared.exactness.rel_diff`.)

Benchmarks run as scripts; each entry point puts the repository root on the path, so the
benchmarks import as one package: ``from benchmarks.shared.machine import ...``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from alexnet_mp.config.train import ModelConfig, OptimConfig, ScheduleConfig

__all__ = ["REPO", "PAPER_MODEL", "PAPER_OPTIM", "PAPER_SCHEDULE", "cpu_name", "sync",
           "measure_matmul_peak", "torchrun_workers"]

REPO = Path(__file__).resolve().parents[2]
# The paper's net and recipe (sec. 5), for the device check's steps: the schema's defaults.
PAPER_MODEL, PAPER_OPTIM, PAPER_SCHEDULE = ModelConfig(name="full", init="paper"), OptimConfig(), ScheduleConfig()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    """Wait until ``device`` has done what was queued (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, size: int, seconds: float = 1.5,
                        dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of back-to-back ``size`` x ``size`` matmuls in ``dtype`` over ``seconds`` on this device and
    thread(s), under the TF32 setting in force: the peak at the precision the model runs at."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    a @ b  # the first call chooses kernels and touches the pages
    sync(device)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        a @ b
        sync(device)
        count += 1
    return count * 2 * size**3 / (time.perf_counter() - start)


def torchrun_workers(pid: int, script: str = "launch/train.py") -> list[int]:
    """torchrun ``pid``'s workers: its children whose command line runs ``script`` (not the
    other children torchrun may start, such as a compile worker pool)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and script.encode() in (stat.parent / "cmdline").read_bytes():
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids
