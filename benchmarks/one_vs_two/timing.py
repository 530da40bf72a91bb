"""bench-1gpu-vs-2gpu, the time part: one process per device timing the product's training step.

Each configuration runs in fresh processes (``time_worker``), which measure the device's
matmul peak, time warm-up and timed steps of ``alexnet_mp.train.train_step``, and report
memory, communication and MFU; ``summarise_time`` (:mod:`.timing_summary`) turns the
ranks' figures into one row.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import resource
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from alexnet_mp import count_parameters
from alexnet_mp.parallel import comm_trace
from alexnet_mp.net.flops import forward_macs
from alexnet_mp.config.train import ModelConfig, OptimConfig, ScheduleConfig
from alexnet_mp.parallel.placement import Placement, place
from alexnet_mp.train import Speed, build_run_state, train_step

from benchmarks.shared.machine import measure_matmul_peak, sync


# -- the time part: one process per device ------------------------------------------------------

def _proc_status(key: str) -> int | None:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM), or None off Linux."""
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _reset_peak_rss() -> bool:
    """Forget the resident-set high-water mark (Linux >= 4.0), so the peak is the steps' own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used so far (/proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _device_peaks(rank: int, world: int, device: torch.device, size: int,
                  seconds: float, dtype: torch.dtype = torch.float32) -> tuple[float, float | None]:
    """(rate alone, rate while every rank runs one) of the matmul on this rank's device.

    Each rank measures alone while the others wait, then all together: two CPU "devices"
    that share a physical core (SMT siblings, or vCPUs on one host core) show it here.
    """
    if world == 1:
        return measure_matmul_peak(device, size, seconds, dtype), None
    alone = 0.0
    for turn in range(world):
        dist.barrier()
        if rank == turn:
            alone = measure_matmul_peak(device, size, seconds, dtype)
    dist.barrier()
    together = measure_matmul_peak(device, size, seconds, dtype)
    dist.barrier()
    return alone, together


def _transfer_rate(device: torch.device, nbytes: int = 1 << 22, repeats: int = 5) -> float:
    """Bytes/s an all-gather moves when every rank is already waiting (no skew): the wire alone."""
    x = torch.zeros(nbytes // 4, device=device)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    best = math.inf
    for _ in range(repeats):
        dist.barrier()
        sync(device)
        start = time.perf_counter()
        dist.all_gather(parts, x)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return nbytes * (dist.get_world_size() - 1) / best


def _join(rank: int, world: int, port: int, job: dict) -> tuple[torch.device, int | None, object]:
    """This rank's device (its cores pinned on a CPU) and process group: (device, core, placement)."""
    core = None
    if job["kind"] == "gpu":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(job["threads"])
        cores = job["cores"]
        core = cores[rank % len(cores)]
        if hasattr(os, "sched_setaffinity"):
            # threads > 1 take the next cores along; each process keeps its own set.
            mine = {cores[(rank * job["threads"] + i) % len(cores)] for i in range(job["threads"])}
            os.sched_setaffinity(0, mine)
    placement = None
    if job.get("replicas", 1) > 1:
        # Replicas (devices=N): the trainer's own process set-up, mesh, DDP and batch split.
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        placement = place(job["towers"], threads=job["threads"], device=device.type)
    elif world > 1:
        dist.init_process_group(job["backend"], init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    return device, core, placement


def _batch(job: dict, device: torch.device, placement) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(job["seed"])  # identical images on every rank
    images = torch.randn(job["batch"], 3, job["input_size"], job["input_size"], generator=gen)
    labels = torch.randint(0, job["num_classes"], (job["batch"],), generator=gen)
    if placement is not None:  # this replica's rows of the global batch
        rows = job["batch"] // job.get("replicas", 1)
        images, labels = (t[placement.replica * rows:(placement.replica + 1) * rows] for t in (images, labels))
    return images.to(device), labels.to(device)


def _memory_kind(device: torch.device) -> str:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated during the steps"
    if _reset_peak_rss():
        return "peak resident set size of the process during the steps (VmHWM, reset after model build)"
    return "peak resident set size of the process since start (ru_maxrss)"


def _timed_steps(state, images, labels, job: dict, device: torch.device, trace, log) -> dict:
    """Warm-up and timed steps; per timed step its seconds, collective seconds, waits and timeline."""
    out: dict = {"steps": [], "comm": [], "waited": [], "timelines": [], "helper": []}
    cpu_start = busy_start = wall_start = None
    total = job["warmup"] + job["timed"]
    for i in range(total):
        if i == job["warmup"]:
            trace.reset()  # count only the timed steps
            # What this process and the whole machine use from here on: the difference is
            # what other processes took from the cores while we were timed.
            cpu_start, busy_start, wall_start = time.process_time(), _machine_busy_seconds(), time.perf_counter()
        before, helper_before = trace.as_dict(), _helper_threads_cpu()
        sync(device)
        start = time.perf_counter()
        train_step(state, images, labels)
        sync(device)
        seconds = time.perf_counter() - start
        log(f"step {i + 1}/{total} ({'warm-up' if i < job['warmup'] else 'timed'}): {seconds:.2f} s")
        if i >= job["warmup"]:
            out["steps"].append(seconds)
            after = trace.as_dict()  # per collective, since the counts began
            since = {k: {f: v[f] - before.get(k, {}).get(f, 0.0) for f in ("seconds", "waited_seconds")}
                     for k, v in after.items()}
            out["comm"].append(sum(v["seconds"] for v in since.values()))
            out["waited"].append({k: v["waited_seconds"] for k, v in since.items()})
            if trace.timeline is not None:
                out["timelines"].append(list(trace.timeline))
            helper_after = _helper_threads_cpu()
            out["helper"].append(None if None in (helper_before, helper_after) else helper_after - helper_before)
        if trace.timeline is not None:
            trace.timeline.clear()
    busy_end = _machine_busy_seconds()
    out.update(cpu=time.process_time() - cpu_start, wall=time.perf_counter() - wall_start,
               busy=None if busy_start is None or busy_end is None else busy_end - busy_start)
    return out


def time_worker(rank: int, world: int, port: int, job: dict, out_dir: str) -> None:
    """Time ``job['warmup'] + job['timed']`` training steps of one configuration on this rank's device."""
    baseline_rss = _proc_status("VmRSS")
    towers = job["towers"]  # processes that hold a tower of one net; the others are neighbours
    speed = Speed(**job["speed"])
    speed.apply_backends()
    dtype = speed.autocast_dtype or torch.float32
    device, core, placement = _join(rank, world, port, job)
    cuda = device.type == "cuda"
    try:
        log = (lambda msg: print(f"[{job['name']}] {msg}", flush=True)) if rank == 0 else (lambda msg: None)
        peaks = _device_peaks(rank, world, device, job["matmul_size"], job["matmul_seconds"], dtype)
        # The product's own run state and step (alexnet_mp.train), so what is timed is what users run.
        if placement is None and towers == 2:  # the two towers of one net on the default group, no replicas
            placement = Placement(rank, world, device, job["backend"], towers=2)
        state = build_run_state(ModelConfig(name=job["model"], geometry=job["geometry"], init="paper"), OptimConfig(),
                                ScheduleConfig(), num_classes=job["num_classes"], input_size=job["input_size"],
                                seed=job["seed"], device=device, speed=speed, overlap=job["overlap"],
                                placement=placement)
        images, labels = _batch(job, device, placement)
        memory_kind = _memory_kind(device)
        # Host timestamps of every collective, comparable between this machine's processes
        # only on a shared monotonic clock; with CUDA events (a GPU) there are none.
        shared_clock = "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation
        trace = comm_trace.start(timeline=shared_clock and not cuda and towers > 1)
        timed = _timed_steps(state, images, labels, job, device, trace, log)
        comm_trace.stop()
        peak_memory = (torch.cuda.max_memory_allocated(device) if cuda else
                       _proc_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        transfer = _transfer_rate(device) if towers > 1 else None
        # The device's rate again after the steps: the higher of the two is the less disturbed.
        again = _device_peaks(rank, world, device, job["matmul_size"], job["matmul_seconds"], dtype)
        peak_alone = max(peaks[0], again[0])
        peak_together = max(peaks[1], again[1]) if peaks[1] is not None else None
        result = {
            "rank": rank, "device": torch.cuda.get_device_name(device) if cuda else f"cpu core {core}", "core": core,
            "threads": torch.get_num_threads(), "parameters": count_parameters(state.model),
            "forward_macs_per_image": forward_macs(state.model),
            # MFU is taken against the rate the device reaches under the step's conditions:
            # with every device of the configuration busy.
            "peak_flops_per_s": peak_together or peak_alone, "peak_flops_alone_per_s": peak_alone,
            "transfer_bytes_per_s": transfer, "peak_memory_bytes": int(peak_memory),
            "baseline_memory_bytes": None if cuda else baseline_rss, "memory_kind": memory_kind,
            "step_seconds": timed["steps"], "comm_seconds": timed["comm"], "waited_by_step": timed["waited"],
            "timeline_by_step": timed["timelines"] or None,
            "helper_cpu_by_step": None if None in timed["helper"] else timed["helper"],
            "comm_bytes": trace.total_bytes(), "comm_by_layer": trace.as_dict(),
            "timed_wall_seconds": timed["wall"], "timed_cpu_seconds": timed["cpu"],
            "machine_busy_seconds": timed["busy"],
        }
        if rank < towers * job.get("replicas", 1):  # a neighbour only keeps the other core busy
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if world > 1:
            dist.destroy_process_group()


# A thread's CPU time in nanoseconds (the first field of schedstat) where the kernel keeps it;
# else utime + stime in clock ticks (fields 14 and 15 of stat), which only counts whole ticks.
_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _helper_threads_cpu() -> float | None:
    """CPU seconds used so far by this process's threads other than the main one (gloo's
    workers, which move and sum the bytes on the tower's own core), from /proc; None off Linux."""
    main = threading.main_thread().native_id
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            if int(tid) == main:
                continue
            try:
                if _SCHEDSTAT:
                    total += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
                else:
                    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
            except OSError:  # the thread ended meanwhile
                continue
    except OSError:
        return None
    return total / 1e9 if _SCHEDSTAT else total / os.sysconf("SC_CLK_TCK")
