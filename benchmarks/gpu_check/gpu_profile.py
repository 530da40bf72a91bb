"""Where a GPU step's time goes, and what CUDA graphs save: a short companion of gpu_check.py.

For the whole net (full-1dev) and one tower (the exchange replaced by a local stand-in), bf16
with channels_last at the first of ``batches``: the profiler's table of the eager step's
kernels (5 steps), then the step time of ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).
Settings: the device check's, ``conf/gpu_check.yaml`` (``device``, ``batches``).

    python benchmarks/gpu_check/gpu_profile.py batches=[128] > benchmarks/results/gpu-profile.log
    python benchmarks/gpu_check/gpu_profile.py device=cpu batches=[2]     # a smoke run (compile's default mode on a CPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile

from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.train import Speed, train_step
from benchmarks.shared.machine import sync
from benchmarks.gpu_check.gpu_check import build_state, inputs, time_steps
from benchmarks.gpu_check.schema import register

register()  # the schema conf/ names (``- base_...``), which the product's config package does not hold


def profile_steps(device: torch.device, batch: int) -> None:
    cuda = device.type == "cuda"
    x, y = inputs(batch, device)
    eager = Speed(precision="bf16", channels_last=True, cudnn_benchmark=True)
    for kind in ("full-1dev", "tower"):
        state = build_state(kind, batch, eager, device)
        for _ in range(3):  # warm-up: allocator, cuDNN's kernel choice
            train_step(state, x, y)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(5):
                train_step(state, x, y)
            sync(device)
        print(f"==== {kind} eager bf16 channels_last batch {batch}, 5 steps", flush=True)
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                        row_limit=22, max_name_column_width=60), flush=True)
    graphs = Speed(precision="bf16", channels_last=True, cudnn_benchmark=True, compile=True,
                   compile_mode="reduce-overhead")
    for kind in ("full-1dev", "tower"):
        torch._dynamo.reset()
        r = time_steps(kind, batch, graphs, device, warmup=5, steps=20)
        print(f"==== {kind} compile reduce-overhead batch {batch}: {r['step_seconds'] * 1e3:.2f} ms/step (median), "
              f"{r['images_per_s']:.0f} images/s (warm-up: {r['warmup_seconds']:.0f} s)", flush=True)


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: profile_steps(torch.device(cfg.device), int(cfg.batches[0])), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="gpu_check", config_path="../../conf")
