"""Where a GPU step's time goes, and what CUDA graphs save: a short companion of gpu_check.py.

For the whole net (full-1dev) and one tower (the exchange replaced by a local stand-in), bf16
with channels_last at one batch size: the profiler's table of the eager step's kernels (5
steps), then the step time of ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).

    python benchmarks/gpu_profile.py cuda 128 > benchmarks/results/gpu-profile.log
    python benchmarks/gpu_profile.py cpu 2       # a smoke run (compile's default mode on a CPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build_state, inputs, sync, time_steps  # noqa: E402

from alexnet_mp.train import Speed, train_step  # noqa: E402


def main(device: torch.device, batch: int) -> None:
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


if __name__ == "__main__":
    main(torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda"), int(sys.argv[2]) if len(sys.argv) > 2 else 128)
