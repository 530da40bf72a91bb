"""The paper's one-GPU half net against its two-GPU full net, on time and on error.

Krizhevsky et al. (2012), sec. 3.2 and footnote 2: the two-GPU net has 1.7% lower
top-1 and 1.2% lower top-5 error than a net with half the kernels trained on one
GPU, and "takes slightly less time to train". Three configurations:

- ``half-1dev``: the half net on one device;
- ``full-2dev``: the two-tower net, one tower per device, one process per device;
- ``full-1dev``: the two-tower net in one process on one device (the baseline for
  parallel efficiency).

A device is a GPU (NCCL) when the machine has enough of them; otherwise it is one
process with ``threads`` threads pinned to its own CPU core (gloo).

    make bench-1gpu-vs-2gpu
    python benchmarks/bench_1gpu_vs_2gpu.py batch=128 timed_steps=20 skip_error=true
    python benchmarks/bench_1gpu_vs_2gpu.py data=imagefolder data.root=/data/ilsvrc2012 epochs=90 seeds=[0,1,2]

Writes ``bench-1gpu-vs-2gpu.json``, ``.md`` and ``.png`` to ``output_dir``
(default ``benchmarks/results``); the training runs go to the Hydra run directory.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import count_parameters
from alexnet_mp.comm import STATS
from alexnet_mp.errors import UserError
from alexnet_mp.flops import TRAIN_PASSES, forward_macs
from alexnet_mp.train import Speed, build_run_state, train_step

REPO = Path(__file__).resolve().parents[1]
NAME = "bench-1gpu-vs-2gpu"
CONFIGS = ("half-1dev", "half-1dev+neighbour", "full-2dev", "full-1dev")
MODEL_OF = {"half-1dev": "half", "half-1dev+neighbour": "half", "full-2dev": "full", "full-1dev": "full"}
DEVICES_OF = {"half-1dev": 1, "half-1dev+neighbour": 1, "full-2dev": 2, "full-1dev": 1}  # devices timed
# half-1dev+neighbour: the half net timed while an identical half-net process runs on the other
# core, so that it and full-2dev both run with every core busy, as two independent GPUs would.
PROCESSES_OF = {**DEVICES_OF, "half-1dev+neighbour": 2}
TRAINED = ("half-1dev", "full-2dev")  # the error part: the paper's two nets
# Sec. 3.2, footnote 2: error of the two-GPU net minus error of the half net (fractions).
PAPER_DELTAS = {"top1_err": -0.017, "top5_err": -0.012}
# (what, which figure, limit): the targets, checked on the measured figures.
TARGETS = (
    ("full-2dev step <= 0.95 x half-1dev+neighbour step", "full-2dev/half-1dev+neighbour", 0.95),
    ("full-2dev step <= 0.53 x full-1dev step", "full-2dev/full-1dev", 0.53),
    ("exposed communication <= 1.5% of the full-2dev step", "exposed_comm_share", 0.015),
)
SUMMARY_KEYS = ("val_top1_err", "val_top5_err", "images_per_s", "seconds", "final_model")
EVAL_KEYS = ("center", "ten_crop", "images")


# -- where the devices are ----------------------------------------------------------------------

def plan_devices(device: str) -> dict[str, Any]:
    """What a "device" is on this machine and which configurations can run."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, not {device!r}")
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if device == "cuda" and gpus == 0:
        raise UserError("device=cuda but no GPU is visible")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if gpus:
        plan = {"kind": "gpu", "backend": "nccl", "gpus": gpus, "cores": cores,
                "meaning": "a device is one GPU; full-2dev runs one process per GPU (NCCL)",
                "names": [torch.cuda.get_device_name(i) for i in range(gpus)], "skip": {}}
        plan["skip"]["half-1dev+neighbour"] = "a CPU row: GPUs do not share their arithmetic with a neighbour"
        if gpus < 2:
            plan["skip"]["full-2dev"] = f"needs 2 GPUs, this machine shows {gpus}"
        return plan
    return {"kind": "cpu", "backend": "gloo", "gpus": 0, "cores": cores,
            "meaning": "a device is one process with its own thread(s) pinned to its own CPU core; "
                       "full-2dev runs two such processes joined by gloo",
            "names": [_cpu_name()], "skip": {}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _sync(device: torch.device) -> None:
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
    _sync(device)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        a @ b
        _sync(device)
        count += 1
    return count * 2 * size**3 / (time.perf_counter() - start)


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
        _sync(device)
        start = time.perf_counter()
        dist.all_gather(parts, x)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return nbytes * (dist.get_world_size() - 1) / best


def _time_worker(rank: int, world: int, port: int, job: dict, out_dir: str) -> None:
    """Time ``job['warmup'] + job['timed']`` training steps of one configuration on this rank's device."""
    baseline_rss = _proc_status("VmRSS")
    cuda = job["kind"] == "gpu"
    core = None
    if cuda:
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
    towers = job["towers"]  # processes that hold a tower of one net; the others are neighbours
    speed = Speed(**job["speed"])
    speed.apply_backends()
    dtype = speed.autocast_dtype or torch.float32
    if world > 1:
        dist.init_process_group(job["backend"], init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _log = (lambda msg: print(f"[{job['name']}] {msg}", flush=True)) if rank == 0 else (lambda msg: None)
        peak_alone, peak_together = _device_peaks(rank, world, device, job["matmul_size"], job["matmul_seconds"],
                                                  dtype)

        # The product's own run state and step (alexnet_mp.train), so what is timed is what users run.
        state = build_run_state({**job["model_cfg"], "name": job["model"]}, job["optim_cfg"], job["schedule_cfg"],
                                num_classes=job["num_classes"], input_size=job["input_size"], seed=job["seed"],
                                device=device, world=towers, speed=speed, overlap=job["overlap"])
        net = state.model
        gen = torch.Generator().manual_seed(job["seed"])  # identical images on every rank
        images = torch.randn(job["batch"], 3, job["input_size"], job["input_size"], generator=gen).to(device)
        labels = torch.randint(0, job["num_classes"], (job["batch"],), generator=gen).to(device)

        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            memory_kind = "torch.cuda.max_memory_allocated during the steps"
        elif _reset_peak_rss():
            memory_kind = "peak resident set size of the process during the steps (VmHWM, reset after model build)"
        else:
            memory_kind = "peak resident set size of the process since start (ru_maxrss)"

        steps, comm_seconds, exposed_seconds = [], [], []
        cpu_start = busy_start = wall_start = None
        total = job["warmup"] + job["timed"]
        for i in range(total):
            if i == job["warmup"]:
                STATS.reset()  # count only the timed steps
                # What this process and the whole machine use from here on: the difference is
                # what other processes took from the cores while we were timed.
                cpu_start, busy_start, wall_start = time.process_time(), _machine_busy_seconds(), time.perf_counter()
            comm_before, exposed_before = STATS.total_seconds(), STATS.total_exposed_seconds()
            _sync(device)
            start = time.perf_counter()
            train_step(state, images, labels)
            _sync(device)
            seconds = time.perf_counter() - start
            phase = "warm-up" if i < job["warmup"] else "timed"
            _log(f"step {i + 1}/{total} ({phase}): {seconds:.2f} s")
            if i >= job["warmup"]:
                steps.append(seconds)
                comm_seconds.append(STATS.total_seconds() - comm_before)
                exposed_seconds.append(STATS.total_exposed_seconds() - exposed_before)

        if cuda:
            peak_memory = torch.cuda.max_memory_allocated(device)
        else:
            peak_memory = _proc_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        cpu_seconds, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
        busy_end = _machine_busy_seconds()
        machine_busy = None if busy_start is None or busy_end is None else busy_end - busy_start
        transfer = _transfer_rate(device) if towers > 1 else None
        # The device's rate again after the steps: the higher of the two is the less disturbed.
        again = _device_peaks(rank, world, device, job["matmul_size"], job["matmul_seconds"], dtype)
        peak_alone = max(peak_alone, again[0])
        peak_together = max(peak_together, again[1]) if peak_together is not None else None
        result = {
            "rank": rank,
            "device": torch.cuda.get_device_name(device) if cuda else f"cpu core {core}",
            "core": core,
            "threads": torch.get_num_threads(),
            "parameters": count_parameters(net),
            "forward_macs_per_image": forward_macs(net),
            # MFU is taken against the rate the device reaches under the step's conditions:
            # with every device of the configuration busy.
            "peak_flops_per_s": peak_together or peak_alone,
            "peak_flops_alone_per_s": peak_alone,
            "transfer_bytes_per_s": transfer,
            "peak_memory_bytes": int(peak_memory),
            "baseline_memory_bytes": None if cuda else baseline_rss,
            "memory_kind": memory_kind,
            "step_seconds": steps,
            "comm_seconds": comm_seconds,
            "exposed_comm_seconds": exposed_seconds,
            "comm_bytes": STATS.total_bytes(),
            "comm_by_layer": STATS.as_dict(),
            "timed_wall_seconds": wall,
            "timed_cpu_seconds": cpu_seconds,
            "machine_busy_seconds": machine_busy,
        }
        if rank < towers:  # a neighbour only keeps the other core busy
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _speed_settings(cfg: DictConfig) -> dict:
    return {k: cfg.get(k, getattr(Speed, k)) for k in Speed.KEYS}


def _conf_group(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / f"{name}.yaml"), resolve=True)


def time_configuration(name: str, cfg: DictConfig, plan: dict) -> list[dict]:
    """Run one configuration's timing processes; return each rank's raw measurements."""
    world, processes = DEVICES_OF[name], PROCESSES_OF[name]
    size = cfg.peak_matmul_size
    if size == "auto":
        size = 8192 if plan["kind"] == "gpu" else 2048
    job = {"name": name, "model": MODEL_OF[name], "kind": plan["kind"], "backend": plan["backend"],
           "cores": plan["cores"], "threads": int(cfg.threads), "seed": int(cfg.seeds[0]),
           "batch": int(cfg.batch), "input_size": int(cfg.input_size), "geometry": str(cfg.geometry),
           "num_classes": int(cfg.num_classes), "warmup": int(cfg.warmup_steps), "timed": int(cfg.timed_steps),
           "matmul_size": int(size), "matmul_seconds": float(cfg.peak_matmul_seconds),
           "towers": world, "speed": _speed_settings(cfg), "overlap": bool(cfg.comm.overlap),
           # The paper's net and recipe (sec. 5): conf/model, conf/optim and conf/schedule as shipped.
           "model_cfg": {"geometry": str(cfg.geometry), "lrn": "paper", "init": "paper"},
           "optim_cfg": _conf_group("optim/sgd"), "schedule_cfg": _conf_group("schedule/plateau")}
    print(f"[{name}] timing {job['model']} net on {world} device(s), batch {job['batch']}, "
          f"{job['input_size']}px: {job['warmup']} warm-up + {job['timed']} timed steps", flush=True)
    with tempfile.TemporaryDirectory() as out_dir:
        # Fresh processes for every configuration, so each peak memory is its own.
        mp.start_processes(_time_worker, args=(processes, _free_port(), job, out_dir), nprocs=processes,
                           join=True, start_method="spawn")
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def _foreign_share(ranks: list[dict]) -> float | None:
    """Share of the machine's CPU time that processes other than the benchmark's used during the timed steps."""
    busy = ranks[0]["machine_busy_seconds"]
    if busy is None:
        return None
    mine = sum(r["timed_cpu_seconds"] for r in ranks)
    return max(busy - mine, 0.0) / (ranks[0]["timed_wall_seconds"] * (os.cpu_count() or 1))


def summarise_time(ranks: list[dict], batch: int, input_size: int) -> dict:
    """Step-time statistics, images/s, and per-device parameters, memory, MFU and communication."""
    # A step ends when the slowest tower ends it.
    steps = [max(r["step_seconds"][i] for r in ranks) for i in range(len(ranks[0]["step_seconds"]))]
    median = statistics.median(steps)
    per_device = []
    for r in ranks:
        flops_per_image = 2 * TRAIN_PASSES * r["forward_macs_per_image"]
        achieved = flops_per_image * batch / median
        comm_s, step_s = sum(r["comm_seconds"]), sum(r["step_seconds"])
        exposed_s = sum(r["exposed_comm_seconds"])
        per_device.append({
            "rank": r["rank"], "device": r["device"], "threads": r["threads"],
            "parameters": r["parameters"],
            "peak_memory_bytes": r["peak_memory_bytes"], "baseline_memory_bytes": r["baseline_memory_bytes"],
            "memory_kind": r["memory_kind"],
            "forward_macs_per_image": r["forward_macs_per_image"],
            "train_flops_per_image": flops_per_image,
            "achieved_flops_per_s": achieved,
            "peak_flops_per_s": r["peak_flops_per_s"],
            "peak_flops_alone_per_s": r["peak_flops_alone_per_s"],
            "mfu": achieved / r["peak_flops_per_s"],
            "mfu_vs_alone": achieved / r["peak_flops_alone_per_s"],
            "comm_bytes_per_image": r["comm_bytes"] / (batch * len(r["step_seconds"])),
            "comm_share": comm_s / step_s if step_s else 0.0,
            "exposed_comm_share": exposed_s / step_s if step_s else 0.0,
            "comm_by_layer": r["comm_by_layer"],
            # Below 1 when the process waited: for a peer in a collective, or for a core another process held.
            "on_cpu_share": r["timed_cpu_seconds"] / r["timed_wall_seconds"],
        })
    out = {
        "devices": len(ranks), "batch": batch, "input_size": input_size, "timed_steps": len(steps),
        "step_seconds": {"median": median, "min": min(steps), "max": max(steps),
                         "mean": statistics.fmean(steps), "all": steps},
        "images_per_s": batch / median,
        "per_device": per_device,
        "comm": None,
        "other_processes_cpu_share": _foreign_share(ranks),
    }
    if len(ranks) > 1:
        per_image = statistics.fmean(d["comm_bytes_per_image"] for d in per_device)
        seconds = statistics.fmean(sum(r["comm_seconds"]) / len(r["comm_seconds"]) for r in ranks)
        rate = statistics.fmean(r["transfer_bytes_per_s"] for r in ranks)
        wire = per_image * batch / rate
        out["comm"] = {
            "bytes_per_image_per_device": per_image,
            "share_of_step": statistics.fmean(d["comm_share"] for d in per_device),
            "seconds_per_step": seconds,
            "note": "seconds from the start of each collective to its end, including any wait for the slower tower "
                    "(alexnet_mp.comm.STATS); exposed: the part the tower waited for, not hidden behind its own compute",
            "exposed_share_of_step": statistics.fmean(d["exposed_comm_share"] for d in per_device),
            "exposed_seconds_per_step": statistics.fmean(sum(r["exposed_comm_seconds"]) / len(r["exposed_comm_seconds"])
                                                         for r in ranks),
            # The same bytes at the rate an all-gather reaches when no rank waits for another.
            "transfer_bytes_per_s": rate,
            "transfer_seconds_per_step_estimate": wire,
            "wait_seconds_per_step_estimate": max(seconds - wire, 0.0),
        }
        # Below 1 when the devices slow each other down (a shared core, memory bandwidth).
        out["device_independence"] = statistics.fmean(d["peak_flops_per_s"] / d["peak_flops_alone_per_s"]
                                                      for d in per_device)
    return out


# -- the error part: the trainer and the evaluator as subprocesses ----------------------------------

_HYDRA_WORDS = {"null", "true", "false", "nan", "inf"}


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    # Plain words and paths go as they are; anything Hydra could read as another type is quoted.
    if re.fullmatch(r"[A-Za-z_/][A-Za-z0-9_./-]*", text) and text.lower() not in _HYDRA_WORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def data_overrides(data_cfg: DictConfig) -> list[str]:
    """The benchmark's data settings as overrides for launch/train.py and launch/evaluate.py,
    which compose the same ``data`` group."""
    missing = [k for k in data_cfg if OmegaConf.is_missing(data_cfg, k)]
    if missing:
        raise UserError(f"data={data_cfg.get('name', '?')} needs {', '.join(f'data.{k}=...' for k in missing)}")
    plain = OmegaConf.to_container(data_cfg, resolve=True)
    return [f"data={plain['name']}"] + [f"data.{k}={_override_value(v)}" for k, v in plain.items()
                                        if k != "name" and not isinstance(v, (dict, list))]


def train_command(name: str, seed: int, epochs: int, run_dir: Path, cfg: DictConfig) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={DEVICES_OF[name]}",
            str(REPO / "launch" / "train.py"), f"model={MODEL_OF[name]}", f"seed={seed}", f"epochs={epochs}",
            f"threads={int(cfg.threads)}", f"device={cfg.device}", f"hydra.run.dir={_override_value(str(run_dir))}",
            *data_overrides(cfg.data), *map(str, cfg.train_overrides)]


def evaluate_command(checkpoint: str, run_dir: Path, cfg: DictConfig) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "evaluate.py"), f"checkpoint={_override_value(checkpoint)}",
            f"output={_override_value(str(run_dir / 'eval.json'))}", f"device={cfg.device}",
            *data_overrides(cfg.data), *map(str, cfg.eval_overrides)]


def _stream(cmd: list[str], log_path: Path, prefix: str) -> None:
    """Run ``cmd``, echoing its output with ``prefix`` and keeping it in ``log_path``."""
    print(f"{prefix} $ {' '.join(cmd)}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            print(f"{prefix} {line.rstrip()}", flush=True)
    if proc.returncode:
        raise RuntimeError(f"{prefix} exited with status {proc.returncode}; see {log_path}")


def read_run(run_dir: Path) -> dict:
    """One training run's figures from the trainer's summary.json and the evaluator's eval.json."""
    figures = {}
    for file, keys in (("summary.json", SUMMARY_KEYS), ("eval.json", EVAL_KEYS)):
        path = run_dir / file
        if not path.is_file():
            raise UserError(f"{path} is missing: the run did not finish")
        blob = json.loads(path.read_text())
        absent = [k for k in keys if k not in blob]
        if absent:
            raise UserError(f"{path} lacks {', '.join(absent)}")
        figures[file] = blob
    summary, ev = figures["summary.json"], figures["eval.json"]
    out = {"run_dir": str(run_dir), "eval_images": int(ev["images"]),
           "train_images_per_s": summary["images_per_s"], "train_seconds": summary["seconds"],
           "trainer_val_top1_err": summary["val_top1_err"], "trainer_val_top5_err": summary["val_top5_err"],
           "chance_top1_err": summary.get("chance_top1_err")}
    for crop in ("center", "ten_crop"):
        out[crop] = {}
        for k in ("top1_err", "top5_err"):
            value = float(ev[crop][k])
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{run_dir / 'eval.json'}: {crop}.{k}={value} is not a fraction in [0, 1]")
            out[crop][k] = value
    return out


def train_and_evaluate(name: str, seed: int, cfg: DictConfig, run_dir: Path) -> dict:
    """Train one configuration from ``seed``, evaluate its final model, return :func:`read_run`."""
    prefix = f"[{name} seed {seed}]"
    logs = run_dir.parent
    _stream(train_command(name, seed, int(cfg.epochs), run_dir, cfg), logs / f"{run_dir.name}.train.log", prefix)
    summary = json.loads((run_dir / "summary.json").read_text())
    _stream(evaluate_command(summary["final_model"], run_dir, cfg), logs / f"{run_dir.name}.eval.log", prefix)
    return read_run(run_dir)


def _spread(values: list[float]) -> dict:
    # One seed has no spread: None (printed n/a), never a 0.00% that reads as a measurement.
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise_errors(runs: list[dict], seeds: list[int]) -> dict:
    out = {"seeds": seeds, "runs": runs,
           "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in runs),
           "train_seconds": statistics.fmean(r["train_seconds"] for r in runs)}
    for crop in ("center", "ten_crop"):
        out[crop] = {k: _spread([r[crop][k] for r in runs]) for k in ("top1_err", "top5_err")}
    return out


# -- results: JSON, Markdown, figure ----------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment(plan: dict, cfg: DictConfig) -> dict:
    status = _git("status", "--porcelain")
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device_kind": plan["kind"], "backend": plan["backend"], "device_meaning": plan["meaning"],
        "device_names": plan["names"], "cpu": _cpu_name(), "cpu_cores_available": len(plan["cores"]),
        "threads_per_device": int(cfg.threads) if plan["kind"] == "cpu" else None,
        "batch": int(cfg.batch), "input_size": int(cfg.input_size),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None,
    }


def build_results(time_part: dict[str, dict], error_part: dict[str, dict], env: dict, settings: dict) -> dict:
    """Every figure of the benchmark, per configuration, plus the ratios, error differences and targets.

    ``time_part`` maps a configuration to :func:`summarise_time`'s result or ``{"skipped": reason}``;
    ``error_part`` maps a trained configuration to :func:`summarise_errors`'s result or ``{"skipped": reason}``.
    """
    configs = {}
    for name in CONFIGS:
        configs[name] = {"model": MODEL_OF[name], "devices": DEVICES_OF[name],
                         "time": time_part.get(name, {"skipped": "not measured"})}
        if name in TRAINED:
            configs[name]["error"] = error_part.get(name, {"skipped": "not measured"})

    def timed(name: str) -> dict | None:
        t = configs[name]["time"]
        return None if "skipped" in t else t

    ratios = {}
    for base in ("half-1dev", "half-1dev+neighbour", "full-1dev"):
        a, b = timed("full-2dev"), timed(base)
        key = f"full-2dev/{base}"
        if a and b:
            ratios[key] = {"step_time": a["step_seconds"]["median"] / b["step_seconds"]["median"],
                           "images_per_s": a["images_per_s"] / b["images_per_s"]}
        else:
            ratios[key] = None
    if ratios["full-2dev/half-1dev"] is not None:
        # What the arithmetic alone allows: a tower's work against the half net's.
        tower = timed("full-2dev")["per_device"][0]["forward_macs_per_image"]
        half = timed("half-1dev")["per_device"][0]["forward_macs_per_image"]
        ratios["full-2dev/half-1dev"]["arithmetic_per_device"] = tower / half
    e_full, e_half = configs["full-2dev"].get("error", {}), configs["half-1dev"].get("error", {})
    if "skipped" not in e_full and "skipped" not in e_half and e_full and e_half:
        train_rate = e_full["train_images_per_s"] / e_half["train_images_per_s"]
        if ratios["full-2dev/half-1dev"] is not None:
            ratios["full-2dev/half-1dev"]["train_images_per_s"] = train_rate
        else:
            ratios["full-2dev/half-1dev"] = {"train_images_per_s": train_rate}

    differences = None
    if "skipped" not in e_full and "skipped" not in e_half and e_full and e_half:
        half_by_seed = {r["seed"]: r for r in e_half["runs"]}
        paired = [(r, half_by_seed[r["seed"]]) for r in e_full["runs"] if r["seed"] in half_by_seed]
        differences = {"definition": "full-2dev error minus half-1dev error, per seed (negative: full net better)",
                       "paper": dict(PAPER_DELTAS)}
        for crop in ("center", "ten_crop"):
            differences[crop] = {}
            for k in ("top1_err", "top5_err"):
                per_seed = [f[crop][k] - h[crop][k] for f, h in paired]
                differences[crop][k] = {**_spread(per_seed), "per_seed": per_seed}

    targets = []
    t2 = timed("full-2dev")
    for label, key, limit in TARGETS:
        if key == "exposed_comm_share":
            value = t2["comm"]["exposed_share_of_step"] if t2 and t2.get("comm") else None
        else:
            value = ratios[key]["step_time"] if ratios.get(key) and "step_time" in ratios[key] else None
        targets.append({"target": label, "value": value, "limit": limit,
                        "met": None if value is None else bool(value <= limit)})
    return {"benchmark": NAME,
            "claim": "Krizhevsky et al. 2012, sec. 3.2 fn. 2: the two-GPU net has 1.7% lower top-1 and 1.2% lower "
                     "top-5 error than the one-GPU net with half the kernels, and trains slightly faster",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "environment": env, "configurations": configs, "ratios": ratios,
            "error_differences": differences, "targets": targets, "notes": _notes(configs, targets, env)}


def _gflops(x: float) -> str:
    return f"{x / 1e9:.0f} GFLOP/s"


def _notes(configs: dict, targets: list[dict], env: dict) -> list[str]:
    """What was skipped, what failed, and why a target was missed, read off the figures."""
    notes = [f"{n}: time part skipped: {c['time']['skipped']}" for n, c in configs.items() if "skipped" in c["time"]]
    notes += [f"{n}: error part skipped: {c['error']['skipped']}" for n, c in configs.items()
              if "skipped" in c.get("error", {})]
    for name, c in configs.items():
        for run in c.get("error", {}).get("runs", []):
            chance = run.get("chance_top1_err")
            if chance is not None and run["center"]["top1_err"] >= chance - 1e-9:
                notes.append(f"{name} seed {run['seed']} ended at chance level (centre top-1 error "
                             f"{100 * run['center']['top1_err']:.1f}%, chance {100 * chance:.1f}%): the net did not "
                             f"learn within the budget, so its error says nothing about the paper's claim")
    t = {n: c["time"] for n, c in configs.items() if "skipped" not in c["time"]}
    for name, c in t.items():
        if PROCESSES_OF[name] > DEVICES_OF[name]:
            continue  # its neighbour is the other process, on purpose
        if (c.get("other_processes_cpu_share") or 0.0) > 0.05:
            notes.append(f"{name}: other processes used {100 * c['other_processes_cpu_share']:.0f}% of the machine's "
                         f"CPU time during the timed steps; its step times are disturbed (rerun on a quiet machine)")
    two = t.get("full-2dev")
    if env.get("device_kind") == "cpu" and (env.get("cpu_cores_available") or 0) < 2:
        notes.append("fewer than 2 CPU cores are available: the two full-2dev processes share a core")
    if two and two.get("device_independence", 1.0) < 0.8:
        d = two["per_device"][0]
        notes.append(
            f"the two devices are not independent: a matmul runs at {_gflops(d['peak_flops_alone_per_s'])} on one "
            f"device alone but {_gflops(d['peak_flops_per_s'])} on each while both run "
            f"({100 * two['device_independence']:.0f}%): the cores are shared, with other processes (see their CPU "
            f"share) or in the hardware (SMT siblings); two devices then do little more arithmetic per second than one")
    for target in targets:
        if target["met"] is not False or not two:
            continue
        if target["target"].startswith("exposed communication"):
            comm = two["comm"]
            layers: dict[str, float] = {}
            for d in two["per_device"]:
                for k, v in d["comm_by_layer"].items():
                    layers[k] = layers.get(k, 0.0) + v["seconds"] / len(two["per_device"]) / two["timed_steps"]
            worst = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(layers.items(), key=lambda kv: -kv[1])[:3])
            notes.append(
                f"missed '{target['target']}' ({100 * target['value']:.1f}%): {comm['exposed_seconds_per_step']:.3f} s "
                f"per step waiting, of {comm['seconds_per_step']:.3f} s inside collectives (largest: {worst}); moving the "
                f"{comm['bytes_per_image_per_device'] / 1024:.0f} KiB per image at the "
                f"{comm['transfer_bytes_per_s'] / 1e9:.2f} GB/s an all-gather reaches without waiting "
                f"takes about {comm['transfer_seconds_per_step_estimate']:.3f} s; the other "
                f"{comm['wait_seconds_per_step_estimate']:.3f} s is waiting for the slower tower")
            continue
        base = "half-1dev+neighbour" if "half-1dev+neighbour" in target["target"] else "full-1dev"
        if base not in t:
            continue
        other = t[base]["per_device"][0]
        work = two["per_device"][0]["forward_macs_per_image"] / other["forward_macs_per_image"]
        speed = statistics.fmean(d["achieved_flops_per_s"] for d in two["per_device"]) / other["achieved_flops_per_s"]
        share = two["comm"]["share_of_step"]
        tower = two["per_device"][0]
        notes.append(
            f"missed '{target['target']}' ({target['value']:.3f}): a full-2dev device does {work:.3f}x the arithmetic "
            f"of {base} per image but at {speed:.2f}x its FLOP/s ({_gflops(tower['achieved_flops_per_s'])} against "
            f"{_gflops(other['achieved_flops_per_s'])}; {100 * tower['mfu_vs_alone']:.0f}% "
            f"against {100 * other['mfu_vs_alone']:.0f}% of a lone device's matmul rate); the step ratio is "
            f"{work:.3f} / {speed:.2f} = {work / speed:.3f}, communication included ({100 * share:.1f}% of the step)")
    return notes


def _spread_text(std: float | None, points: bool = False) -> str:
    if std is None:
        return "n/a"
    return f"{100 * std:.2f}" if points else _pct(std, 2)


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f} MiB"


def markdown(results: dict) -> str:
    env, s = results["environment"], results["settings"]
    lines = [f"# {NAME}", "",
             f"{results['claim']}.", "",
             f"Device: {env['device_meaning']} ({', '.join(env['device_names'])}). Batch {s['batch']}, "
             f"{s['input_size']}px, {s['warmup_steps']} warm-up + {s['timed_steps']} timed steps; "
             f"speed options {', '.join(f'{k}={v}' for k, v in s['speed'].items())}, comm.overlap={s['overlap']}; "
             f"torch {env['torch']}, "
             f"commit {(env['git_commit'] or '?')[:10]}{' (dirty)' if env['git_dirty'] else ''}, {results['created']}.",
             "", "## Time (one training step)", "",
             "| configuration | step median (min-max) | images/s | params / device | peak memory / device "
             "| MFU / device | peak matmul / device | comm bytes / image / device | comm share (exposed) "
             "| other processes' CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in results["configurations"].items():
        t = c["time"]
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} | | | | | | | | |")
            continue
        d = t["per_device"]
        st = t["step_seconds"]
        params = " / ".join(f"{x['parameters'] / 1e6:.2f}M" for x in d)
        memory = " / ".join(_mib(x["peak_memory_bytes"]) + (f" (+{_mib(x['peak_memory_bytes'] - base)})"
                                                          if (base := x["baseline_memory_bytes"]) else "") for x in d)
        mfu = " / ".join(_pct(x["mfu"]) + (f" ({_pct(x['mfu_vs_alone'])})" if t["devices"] > 1 else "") for x in d)
        peak = " / ".join(_gflops(x["peak_flops_per_s"]) + (f" ({_gflops(x['peak_flops_alone_per_s'])} alone)"
                                                            if t["devices"] > 1 else "") for x in d)
        comm_bytes = f"{t['comm']['bytes_per_image_per_device'] / 1024:.0f} KiB" if t["comm"] else "-"
        comm_share = (f"{_pct(t['comm']['share_of_step'])} ({_pct(t['comm']['exposed_share_of_step'])})"
                      if t["comm"] else "-")
        lines.append(f"| {name} | {st['median']:.3f} s ({st['min']:.3f}-{st['max']:.3f}) | {t['images_per_s']:.1f} "
                     f"| {params} | {memory} | {mfu} | {peak} | {comm_bytes} | {comm_share} "
                     f"| {_pct(t['other_processes_cpu_share'], 0)} |")
    memory_kinds = {x["memory_kind"] for c in results["configurations"].values() if "skipped" not in c["time"]
                    for x in c["time"]["per_device"]}
    if memory_kinds:
        lines += ["", f"Peak memory: {'; '.join(sorted(memory_kinds))}; in brackets, above the process's resident "
                      "size after importing torch. MFU: model FLOPs (3 x 2 x conv/fc "
                      "multiply-adds per image, alexnet_mp.flops) per second over the matmul rate measured in "
                      "the same process on the same device, at the model's precision and TF32 setting, while every "
                      "process of the configuration runs one; in brackets (full-2dev), against the device's rate "
                      "when it runs alone. Comm share: from the start to the end of each collective; in brackets, "
                      "exposed: the time the tower waited for it."]
    lines += ["", "| ratio | step time | images/s | other |", "|---|---|---|---|"]
    for key, r in results["ratios"].items():
        if r is None:
            lines.append(f"| {key} | - | - | |")
            continue
        other = []
        if "arithmetic_per_device" in r:
            other.append(f"arithmetic per device {r['arithmetic_per_device']:.3f}")
        if "train_images_per_s" in r:
            other.append(f"training images/s (error part) {r['train_images_per_s']:.3f}")
        lines.append(f"| {key} | {r['step_time']:.3f} | {r['images_per_s']:.3f} | {'; '.join(other)} |"
                     if "step_time" in r else f"| {key} | - | - | {'; '.join(other)} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for t in results["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"| {t['target']} | {value} | {'-' if t['met'] is None else ('yes' if t['met'] else 'no')} |")

    lines += ["", "## Error (validation)", ""]
    ec = {n: results["configurations"][n]["error"] for n in TRAINED}
    if all("skipped" not in e for e in ec.values()):
        lines += [f"Data: {' '.join(s['data'])}; {s['epochs']} epochs; seeds {s['seeds']}. Mean (std over seeds).", "",
                  "| configuration | centre top-1 | centre top-5 | ten-crop top-1 | ten-crop top-5 "
                  "| training images/s |",
                  "|---|---|---|---|---|---|"]
        for name, e in ec.items():
            cells = [f"{_pct(e[c][k]['mean'], 2)} ({_spread_text(e[c][k]['std'])})"
                     for c in ("center", "ten_crop") for k in ("top1_err", "top5_err")]
            lines.append(f"| {name} | {' | '.join(cells)} | {e['train_images_per_s']:.1f} |")
        d = results["error_differences"]
        cells = [f"{100 * d[c][k]['mean']:+.2f} ({_spread_text(d[c][k]['std'], points=True)})"
                 for c in ("center", "ten_crop") for k in ("top1_err", "top5_err")]
        lines.append(f"| full-2dev - half-1dev (points) | {' | '.join(cells)} | |")
        paper = f"{100 * PAPER_DELTAS['top1_err']:+.1f} | {100 * PAPER_DELTAS['top5_err']:+.1f}"
        lines.append(f"| paper, sec. 3.2 fn. 2 (points) | {paper} | {paper} | |")
    else:
        lines += [f"- {n}: skipped: {e['skipped']}" for n, e in ec.items() if "skipped" in e]
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Throughput (left) and error differences against the paper's (right), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    names, rates, lo, hi = [], [], [], []
    for name, c in results["configurations"].items():
        t = c["time"]
        if "skipped" in t:
            continue
        names.append(name)
        rates.append(t["images_per_s"])
        lo.append(t["images_per_s"] - t["batch"] / t["step_seconds"]["max"])
        hi.append(t["batch"] / t["step_seconds"]["min"] - t["images_per_s"])
    if names:
        bars = left.bar(names, rates, yerr=[lo, hi], capsize=4, color=["#4c72b0", "#dd8452", "#8c8c8c"][: len(names)])
        for bar, rate in zip(bars, rates):
            left.text(bar.get_x() + bar.get_width() / 2, bar.get_height() / 2, f"{rate:.1f}", ha="center",
                      va="center", fontsize=10, color="white", fontweight="bold")
    env, s = results["environment"], results["settings"]
    left.set_ylabel("images / s (median step; bars: min-max)")
    left.set_ylim(0, 1.25 * max([r + h for r, h in zip(rates, hi)] or [1.0]))
    left.set_title(f"Throughput, batch {s['batch']}, {s['input_size']}px, {env['device_kind']}")
    r = results["ratios"].get("full-2dev/half-1dev") or {}
    if "images_per_s" in r:
        left.text(0.02, 0.97, f"full-2dev / half-1dev: {r['images_per_s']:.2f}x\n(paper: \"slightly faster\")",
                  transform=left.transAxes, va="top", fontsize=9)

    d = results["error_differences"]
    labels, x, width = ["top-1", "top-5"], [0, 1], 0.35
    values = [0.0] + [100 * v for v in PAPER_DELTAS.values()]
    right.axhline(0, color="black", linewidth=0.8)
    if d:
        for offset, crop, color in ((-width / 2, "center", "#4c72b0"), (width / 2, "ten_crop", "#55a868")):
            means = [100 * d[crop][k]["mean"] for k in ("top1_err", "top5_err")]
            stds = [100 * (d[crop][k]["std"] or 0.0) for k in ("top1_err", "top5_err")]
            right.bar([i + offset for i in x], means, width, yerr=stds, capsize=4, color=color,
                      label="centre crop" if crop == "center" else "ten-crop")
            for i, m in zip(x, means):
                right.annotate(f"{m:+.2f}", (i + offset, m), ha="center", va="top" if m < 0 else "bottom",
                               xytext=(0, -3 if m < 0 else 3), textcoords="offset points", fontsize=8)
            values += [m - sd for m, sd in zip(means, stds)] + [m + sd for m, sd in zip(means, stds)]
        right.set_title(f"Error, full-2dev minus half-1dev\n(mean and std over {len(s['seeds'])} seed(s), "
                        f"{s['epochs']} epochs)")
    else:
        right.text(0.5, 0.75, "error part skipped", ha="center", va="center", transform=right.transAxes)
        right.set_title("Error, full-2dev minus half-1dev")
    paper = [100 * PAPER_DELTAS[k] for k in ("top1_err", "top5_err")]
    right.scatter(x, paper, marker="_", s=1600, linewidths=3, color="#c44e52", zorder=3,
                  label="paper, sec. 3.2 fn. 2")
    for i, p in zip(x, paper):
        right.annotate(f"paper {p:+.1f}", (i, p), ha="left", va="top", xytext=(24, -2), textcoords="offset points",
                       color="#c44e52", fontsize=9)
    right.set_xticks(x, labels)
    span = max(values) - min(values) or 1.0
    right.set_ylim(min(values) - 0.15 * span, max(values) + 0.15 * span)
    right.set_xlim(-0.7, 1.7)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False,
                 markerscale=0.4)
    right.set_ylabel("percentage points (negative: two-device net better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_results(results: dict, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: output_dir / f"{NAME}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["md"].write_text(markdown(results))
    plot(results, paths["png"])
    return paths


# -- the whole benchmark --------------------------------------------------------------------------

def run_benchmark(cfg: DictConfig, run_dir: Path) -> tuple[dict, dict[str, Path]]:
    """Both parts, then the three result files. Returns the results and the files' paths."""
    plan = plan_devices(str(cfg.device))
    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise UserError("seeds must list at least one seed, e.g. seeds=[0]")
    if int(cfg.timed_steps) < 1 or int(cfg.warmup_steps) < 0 or int(cfg.batch) < 1:
        raise UserError("timed_steps and batch must be at least 1, warmup_steps at least 0")
    plain = OmegaConf.to_container(cfg, resolve=True)
    settings = {k: plain[k]
                for k in ("device", "batch", "input_size", "geometry", "num_classes", "warmup_steps", "timed_steps",
                          "threads", "peak_matmul_size", "peak_matmul_seconds", "seeds", "epochs", "train_overrides",
                          "eval_overrides", "skip_time", "skip_error")}
    settings["data"] = data_overrides(cfg.data)
    settings["speed"], settings["overlap"] = _speed_settings(cfg), bool(cfg.comm.overlap)
    settings["time_seed"] = seeds[0]  # weights, images and dropout masks of the timed steps
    print(f"{NAME}: {plan['meaning']} ({', '.join(plan['names'])})", flush=True)

    time_part: dict[str, dict] = {}
    for name in CONFIGS:
        if cfg.skip_time:
            time_part[name] = {"skipped": "skip_time=true"}
        elif name in plan["skip"]:
            time_part[name] = {"skipped": plan["skip"][name]}
        else:
            ranks = time_configuration(name, cfg, plan)
            time_part[name] = summarise_time(ranks, int(cfg.batch), int(cfg.input_size))
            print(f"[{name}] median step {time_part[name]['step_seconds']['median']:.3f} s, "
                  f"{time_part[name]['images_per_s']:.1f} images/s", flush=True)

    error_part: dict[str, dict] = {}
    failure = None
    for name in TRAINED:
        if cfg.skip_error:
            error_part[name] = {"skipped": "skip_error=true"}
        elif name in plan["skip"]:
            error_part[name] = {"skipped": plan["skip"][name]}
    if not error_part:
        runs: dict[str, list[dict]] = {name: [] for name in TRAINED}
        try:
            for seed in seeds:
                for name in TRAINED:
                    run = train_and_evaluate(name, seed, cfg, run_dir / f"{name}-seed{seed}")
                    runs[name].append({"seed": seed, **run})
            error_part = {name: summarise_errors(runs[name], seeds) for name in TRAINED}
        except (RuntimeError, UserError) as err:
            failure = str(err)
            error_part = {name: {"skipped": f"failed: {failure}"} for name in TRAINED}
    elif len(error_part) < len(TRAINED):  # one of the pair cannot run: no comparison
        reason = "; ".join(e["skipped"] for e in error_part.values())
        error_part = {name: {"skipped": reason} for name in TRAINED}

    results = build_results(time_part, error_part, environment(plan, cfg), settings)
    paths = write_results(results, Path(str(cfg.output_dir)))
    print("\n" + markdown(results), flush=True)
    print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    if failure:
        raise UserError(f"the error part failed: {failure}")
    return results, paths


@hydra.main(config_path="../conf", config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run_benchmark(cfg, Path(HydraConfig.get().runtime.output_dir).resolve())
    except UserError as err:
        print(f"{NAME}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
