"""The device check: the main job on one GPU, step times of the net, and the data path feeding it.

Parts, in this order, each written to ``gpu-check.json`` and ``gpu-check.md`` in ``output_dir``
as it ends (with torch's, CUDA's, cuDNN's and NCCL's versions):

0. **LRN** (the largest item of the eager bf16 step's profile on a GPU, docs/speed.md). Forward and
   backward of the whole net's two LRN layers at batch 128: torch's
   ``F.local_response_norm``, ``alexnet_mp.net.lrn`` (hand-written autograd) and the fused Triton
   kernels (``alexnet_mp.net.lrn_triton``), eager and compiled, fp32 and bf16.
0b. **Two processes** on the one GPU (``two_processes``, :mod:`.two_processes`): exactness,
   sync-free ``launch/train.py`` steps, kill -9 and resume, and the two-process step row.

1. **Step times** (the towers on real GPUs). ``full-1dev`` (the whole net, groups=2
   convolutions, one process) and ``tower`` (one tower's compute, its exchanges replaced by a
   local stand-in of the same shapes: what one GPU of a pair computes, without a second GPU)
   at each batch size, fp32 and bf16, with and without channels_last and torch.compile.
   MFU is against a matmul peak measured at the same precision and TF32 setting.
2. **Data** (the fast data path). Training steps of the whole net fed by the
   prepared-data loader (uint8 batches, pinned, augmented on the GPU) against the same
   steps fed by inputs already in GPU memory.

    bash benchmarks/gpu_check/gpu_check.sh                         # on a machine with a GPU: tests, then this
    python benchmarks/gpu_check/gpu_check.py device=cpu batches=[4] steps=1 warmup=1 compile=[false] \
        matmul_size=256 data_images=64 data_batch=16 data_epochs=1 lrn_batch=4 lrn_compile=false \
        two_steps=1 two_batch=2 train_steps=12 kill_at=7 variants=[eager]   # a smoke run on a CPU

Settings: ``conf/gpu_check.yaml`` (schema ``schema.py`` beside this file, ``GpuCheckConfig``).
Everything is the product's code: ``alexnet_mp.train.build_run_state`` and ``train_step``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import data
from alexnet_mp.job import provenance
from alexnet_mp.net.arch import LRN_OPTIONS, full_spec
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.data import BatchAugment, PreparedImages
from alexnet_mp.net.flops import TRAIN_PASSES, forward_macs
from alexnet_mp.net.lrn import local_response_norm
from alexnet_mp.net.model import AlexNet, Exchange, build_model
from alexnet_mp.train.optim import optimizer_for, schedule_for
from alexnet_mp.train import RunState, Speed, build_run_state, train_step
from benchmarks.shared.machine import PAPER_MODEL, PAPER_OPTIM, PAPER_SCHEDULE, REPO, measure_matmul_peak, sync
from benchmarks.shared.output import write_results
from benchmarks.gpu_check.report import markdown, versions
from benchmarks.gpu_check.two_processes import two_processes
from benchmarks.gpu_check.schema import register

register()  # the schema conf/ names (``- base_...``), which the product's config package does not hold

NAME = "gpu-check"


class LocalStandIn(Exchange):
    """What a tower receives from the other, made up locally with the same shapes: the
    tower's own units stand in for the other tower's. Its compute is then exactly one
    tower's, with no second device."""

    def gather(self, x: torch.Tensor, layer: str, sizes: list[int]) -> torch.Tensor:  # noqa: ARG002
        others = [x.narrow(1, 0, n) if n <= x.shape[1] else torch.cat([x, x[:, : n - x.shape[1]]], 1)
                  for n in sizes[1:]]
        return torch.cat([x, *others], dim=1)

    def gather_logits(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return self.gather(x, "logits", sizes)


def build_state(kind: str, batch: int, speed: Speed, device: torch.device, classes: int = 1000) -> RunState:
    state = build_run_state(PAPER_MODEL, PAPER_OPTIM, PAPER_SCHEDULE, num_classes=classes, input_size=224, seed=0,
                            device=device, speed=speed)
    if kind == "tower":  # one tower of the same net, fed by the stand-in exchange
        torch.manual_seed(0)
        tower = AlexNet(full_spec(classes), input_size=224, tower=(0, 2), exchange=LocalStandIn(), init="paper")
        tower = tower.to(device)
        if speed.channels_last:
            tower = tower.to(memory_format=torch.channels_last)
        optimizer = optimizer_for(tower, PAPER_OPTIM)
        state = RunState(tower, optimizer, schedule_for(optimizer, PAPER_SCHEDULE), device, speed)
    return state


def inputs(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random images (about the pixel scale of the paper's inputs) and labels every time."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g).mul_(60).to(device)
    return x, torch.randint(0, 1000, (batch,), generator=g).to(device)


def timed(fn, device: torch.device, warmup: int, steps: int) -> tuple[list[float], float, object]:
    """``fn()`` ``warmup`` times, then ``steps`` times (at least once), each timed to the device's
    end: the times, the warm-up's seconds and the last call's result."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm, times, result = time.perf_counter() - start, [], None
    for _ in range(max(steps, 1)):
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, warm, result


def time_steps(kind: str, batch: int, speed: Speed, device: torch.device, warmup: int, steps: int) -> dict:
    state = build_state(kind, batch, speed, device)
    x, y = inputs(batch, device)
    times, warm, _ = timed(lambda: train_step(state, x, y), device, warmup, steps)
    median = statistics.median(times)
    flops = 2 * TRAIN_PASSES * forward_macs(state.model) * batch / median
    return {"step_seconds": median, "min": min(times), "max": max(times), "images_per_s": batch / median,
            "train_flops_per_s": flops, "warmup_seconds": warm, "loss_finite": state.flush_loss() is not None}


def step_grid(args) -> list[tuple]:
    """Eager rows first (cheap), then compiled ones, bf16 and CUDA graphs first: a run cut short
    by its deadline keeps the rows that matter most. Compiled rows are channels_last only,
    since each costs a compilation (tens of seconds each on a GPU)."""
    eager = [(b, p, cl, False, "default", k) for b, p, cl, k in
             itertools.product(args.batches, args.precisions, [False, True], ("full-1dev", "tower"))]
    compiled = [(b, p, True, True, m, k) for p in sorted(args.precisions, key=lambda p: p != "bf16")
                for m in args.compile_modes for b in args.batches for k in ("full-1dev", "tower")]
    return (eager if False in args.compile else []) + (compiled if True in args.compile else [])


def step_part(args, device: torch.device, rows: list[dict], write) -> None:
    peaks = {}
    for precision in args.precisions:
        speed = Speed(precision=precision, tf32=args.tf32)
        speed.apply_backends()
        dtype = speed.autocast_dtype or torch.float32
        peaks[precision] = measure_matmul_peak(device, args.matmul_size, seconds=1.0, dtype=dtype)
    deadline = time.perf_counter() + args.deadline_s
    for batch, precision, channels_last, compiled, mode, kind in step_grid(args):
        speed = Speed(precision=precision, channels_last=channels_last, compile=compiled, cudnn_benchmark=True,
                      tf32=args.tf32, compile_mode=mode)
        row = {"configuration": kind, "batch": batch, **vars(speed), "peak_flops_per_s": peaks[precision]}
        if time.perf_counter() > deadline:
            rows.append({**row, "skipped": f"past the {args.deadline_s:.0f} s deadline"})
            continue
        torch._dynamo.reset()
        r = time_steps(kind, batch, speed, device, args.warmup, args.steps)
        row.update(r, mfu=r["train_flops_per_s"] / peaks[precision])
        rows.append(row)
        write()
        print(f"[gpu-check] {kind} batch {batch} {precision} channels_last={channels_last} compile={compiled} ({mode}): "
              f"{r['step_seconds'] * 1e3:.2f} ms, {r['images_per_s']:.0f} images/s, MFU {100 * row['mfu']:.0f}% "
              f"(warm-up {r['warmup_seconds']:.1f} s)", flush=True)


def _torchs_lrn(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The net's LRN before alexnet_mp.net.lrn: torch's, per tower, in fp32 under bf16."""
    low = x.dtype == torch.bfloat16
    out = [F.local_response_norm(c.float() if low else c, **LRN_OPTIONS["paper"]).to(x.dtype)
           for c in x.chunk(groups, 1)]
    return torch.cat(out, 1)


def _lrn_inputs() -> tuple[list[torch.Size], int]:
    """The shapes (without the batch) the whole net's LRN layers normalise, and its towers:
    read off the net itself, one image through it."""
    shapes: list[torch.Size] = []
    net = build_model("full", lrn="paper", init=None, lrn_function=lambda x, **_: shapes.append(x.shape[1:]) or x)
    with torch.no_grad():
        net(torch.zeros(1, 3, net.input_size, net.input_size))
    return shapes, net.groups_here


def lrn_part(args, device: torch.device) -> list[dict]:
    """Forward + backward of the whole net's LRN layers (conv1 and conv2, per tower), each
    implementation on the same ReLU outputs and output gradients."""
    ours = lambda x, groups: local_response_norm(x, groups=groups, fused=False, **LRN_OPTIONS["paper"])  # noqa: E731
    fused = lambda x, groups: local_response_norm(x, groups=groups, fused=True, **LRN_OPTIONS["paper"])  # noqa: E731
    shapes, groups = _lrn_inputs()
    rows = []
    g = torch.Generator().manual_seed(0)
    for precision in args.precisions:
        impls = {"torch": _torchs_lrn, "alexnet_mp": ours}
        if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            impls["fused"] = fused
        if args.lrn_compile:  # one static graph per layer
            impls.update({f"{name} compiled": torch.compile(fn, dynamic=False) for name, fn in list(impls.items())})
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        layers = [(torch.randn(args.lrn_batch, *shape, generator=g).mul_(20).relu_().to(device, dtype),
                   torch.randn(args.lrn_batch, *shape, generator=g).to(device, dtype)) for shape in shapes]
        reference = None
        for impl, fn in impls.items():
            def once(fn=fn):
                outs = []
                for x, grad in layers:
                    x = x.detach().requires_grad_()
                    y = fn(x, groups)
                    y.backward(grad)
                    outs.append((y.detach(), x.grad))
                return outs
            times, _, outs = timed(once, device, args.warmup, args.steps)
            # Largest difference from torch's, relative to its largest magnitude, output and gradient.
            reference = reference or outs
            diff = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                       for pair_a, pair_b in zip(outs, reference) for a, b in zip(pair_a, pair_b))
            rows.append({"implementation": impl, "precision": precision, "batch": args.lrn_batch,
                         "seconds": statistics.median(times), "max_rel_diff_from_torch": diff})
            print(f"[gpu-check] LRN {impl} {precision} batch {args.lrn_batch}: "
                  f"{rows[-1]['seconds'] * 1e3:.2f} ms forward+backward (differs from torch's by {diff:.1e})",
                  flush=True)
    return rows


def data_part(args, device: torch.device, work: Path) -> dict:
    """The whole net's steps fed by the prepared loader against the same steps from GPU memory."""
    src = Path(args.images)
    split = next(s for s in ("train", "val") if (src / s).is_dir())
    tree = work / "source"
    classes = sorted(p for p in (src / split).iterdir() if p.is_dir())
    for s in ("train", "val"):
        for c in classes:
            (tree / s / c.name).mkdir(parents=True, exist_ok=True)
            files = sorted(f for f in c.iterdir() if f.is_file())
            copies = max(1, args.data_images // max(1, len(classes) * len(files))) if s == "train" else 1
            for k in range(copies):  # the same photographs under several names: a larger set to read
                for f in files:
                    (tree / s / c.name / f"{k}-{f.name}").symlink_to(f.resolve())
    out = work / "prepared"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "launch" / "prepare.py"), f"data.root={tree}", f"out={out}",
                    "data.image_size=256", "progress=false"], cwd=REPO, check=True)
    prepare_seconds = time.perf_counter() - start
    ds = PreparedImages(out, "train", 256)
    speed = Speed(precision=args.data_precision, channels_last=True, cudnn_benchmark=True, tf32=args.tf32)
    augment = BatchAugment(ds.stats(), 224, seed=0, device=device)
    loader = data.BatchLoader(ds, args.data_batch, shuffle=True, seed=0, workers=data.default_workers(),
                              drop_last=True, pin_memory=device.type == "cuda")
    state = build_state("full-1dev", args.data_batch, speed, device, classes=ds.num_classes)

    def fed(epochs: int) -> tuple[int, float]:
        images, start = 0, None
        for epoch in range(epochs + 1):
            for b in loader.epoch(epoch):
                x = augment.train(b.images.to(device, non_blocking=True), b.indices, b.epoch)
                train_step(state, x, b.labels.to(device, non_blocking=True))
                if start is not None:
                    images += len(b)
            if start is None:  # epoch 0 warms up the workers, kernels and page cache
                sync(device)
                start = time.perf_counter()
        sync(device)
        return images, time.perf_counter() - start

    images, seconds = fed(args.data_epochs)
    resident = [(augment.train(b.images.to(device), b.indices, b.epoch), b.labels.to(device))
                for b in itertools.islice(loader.epoch(0), 8)]
    sync(device)
    steps = images // args.data_batch
    start = time.perf_counter()
    for k in range(steps):
        x, y = resident[k % len(resident)]
        train_step(state, x, y)
    sync(device)
    memory_rate = steps * args.data_batch / (time.perf_counter() - start)
    loader_rate = images / seconds
    return {"images": len(ds), "batch": args.data_batch, "workers": loader.workers, "precision": args.data_precision,
            "prepare_seconds": prepare_seconds, "loader_images_per_s": loader_rate,
            "memory_images_per_s": memory_rate, "ratio": loader_rate / memory_rate}


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: check(cfg), cfg)  # cfg checked against its schema (GpuCheckConfig) first


def skipped_parts(args) -> dict[str, str]:
    """The parts this run leaves out, each with the reason (the settings that ask it, or a
    missing images folder)."""
    skipped = {}
    if not args.lrn_batch:
        skipped["LRN"] = "lrn_batch=0"
    if args.skip_two:
        skipped["two processes"] = "skip_two=true"
    if args.skip_data:
        skipped["data"] = "skip_data=true"
    elif not args.images:
        skipped["data"] = "no images= given (a folder of real JPEG photographs, train/ and/or val/ of class folders)"
    elif not Path(args.images).is_dir():
        skipped["data"] = f"images={args.images} is not a folder"
    if args.skip_steps:
        skipped["steps"] = "skip_steps=true"
    return skipped


def check(cfg: DictConfig) -> None:
    """Every part in turn, the result files rewritten after each."""
    args = OmegaConf.to_object(cfg)  # plain lists and numbers for the parts
    device = torch.device(args.device)
    result = {"created": _dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tf32": args.tf32,
              "settings": OmegaConf.to_container(cfg), "steps": [], "data": None, "lrn": [], "versions": versions(),
              "two_processes": {}}
    result["provenance"] = provenance.record(cfg)

    def write() -> None:  # after every part, so a run cut short keeps what it measured
        write_results(args.output_dir, NAME, result, markdown(result))

    result["skipped"] = skipped_parts(args)  # each said once here, and in the result files
    for part, why in result["skipped"].items():
        print(f"[gpu-check] {part} part skipped: {why}", flush=True)
    if args.lrn_batch:
        try:  # a failure here (a compiler's, say) must not cost the device check its other parts
            result["lrn"] = lrn_part(args, device)
        except Exception as err:  # noqa: BLE001
            result["lrn_error"] = f"{type(err).__name__}: {err}"[:500]
            print(f"[gpu-check] LRN part failed: {result['lrn_error']}", flush=True)
        write()
    if not args.skip_two:
        two_processes(args, write, result["two_processes"])
        if result["two_processes"].get("exact_detail"):
            result["steps"].append(result["two_processes"]["exact_detail"]["step"])
        write()
    if "data" not in result["skipped"]:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            result["data"] = data_part(args, device, Path(tmp))
        write()
    if not args.skip_steps:
        step_part(args, device, result["steps"], write)
        write()
    print(markdown(result), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_hydra(main, config_name="gpu_check", config_path="../../conf")
