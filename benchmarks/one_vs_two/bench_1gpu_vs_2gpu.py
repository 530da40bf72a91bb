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
    python benchmarks/one_vs_two/bench_1gpu_vs_2gpu.py batch=128 timed_steps=20 skip_error=true
    python benchmarks/one_vs_two/bench_1gpu_vs_2gpu.py data=imagefolder data.root=/data/ilsvrc2012 epochs=90 seeds=[0,1,2]

Writes ``bench-1gpu-vs-2gpu.json``, ``.md`` and ``.png`` to ``output_dir``
(default ``outputs/benchmarks``; ``make bench-1gpu-vs-2gpu-publish`` writes the published
figures, ``benchmarks/results``); the training runs go to the Hydra run directory.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import config
from alexnet_mp.job import provenance
from alexnet_mp.job.cli import Job, data_overrides, override_value, run_hydra, train_command
from alexnet_mp.errors import UserError
from alexnet_mp.parallel.placement import free_port
from alexnet_mp.paper.reproduce.submit import run_logged
from alexnet_mp.paper.student_t import spread
from alexnet_mp.train import Speed

# The benchmark by concern, each a module of this folder: what is compared (configs), the timing
# processes (timing) and their summary (timing_summary), the results (results), the report
# (report), earlier results as sources (sources), the settings (schema); this file orchestrates.
from benchmarks.shared.machine import REPO, cpu_name
from benchmarks.one_vs_two.configs import (CONFIGS, DEVICES_OF, EVAL_KEYS, MODEL_OF, NAME, PROCESSES_OF, SUMMARY_KEYS, TRAINED,
                           scale_configurations)
from benchmarks.shared.output import write_results
from benchmarks.one_vs_two.report import markdown, plot
from benchmarks.one_vs_two.results import build_results, environment
from benchmarks.one_vs_two.sources import error_from_reproduce, timing_from_result
from benchmarks.one_vs_two.timing import time_worker
from benchmarks.one_vs_two.timing_summary import merge_rounds, summarise_time
from benchmarks.one_vs_two.schema import register

register()  # the schema conf/ names (``- base_...``), which the product's config package does not hold

# -- where the devices are ----------------------------------------------------------------------

def plan_devices(device: str) -> dict[str, Any]:
    """What a "device" is on this machine and which configurations can run."""
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
            "names": [cpu_name()], "skip": {}}


def _speed_settings(cfg: DictConfig) -> dict:
    return {k: cfg.get(k, getattr(Speed, k)) for k in Speed.KEYS}


def time_configuration(name: str, cfg: DictConfig, plan: dict, shape: dict | None = None) -> list[dict]:
    """Run one configuration's timing processes; return each rank's raw measurements.
    ``shape`` (devices=N): the model, towers and replicas of a configuration not in CONFIGS."""
    if shape is None:
        world, processes, model, replicas = DEVICES_OF[name], PROCESSES_OF[name], MODEL_OF[name], 1
        towers = world
    else:
        model, towers, replicas = shape["model"], shape["towers"], shape["replicas"]
        world = processes = towers * replicas
    size = cfg.peak_matmul_size
    if size == "auto":
        size = 8192 if plan["kind"] == "gpu" else 2048
    # The net and recipe timed are the paper's (sec. 5), the schema's defaults (bench_timing.time_worker).
    job = {"name": name, "model": model, "kind": plan["kind"], "backend": plan["backend"],
           "cores": plan["cores"], "threads": int(cfg.threads), "seed": int(cfg.seeds[0]),
           "batch": int(cfg.batch), "input_size": int(cfg.input_size), "geometry": str(cfg.geometry),
           "num_classes": int(cfg.num_classes), "warmup": int(cfg.warmup_steps), "timed": int(cfg.timed_steps),
           "matmul_size": int(size), "matmul_seconds": float(cfg.peak_matmul_seconds),
           "towers": towers, "replicas": replicas, "speed": _speed_settings(cfg), "overlap": bool(cfg.comm.overlap)}
    print(f"[{name}] timing {job['model']} net on {world} device(s), batch {job['batch']}, "
          f"{job['input_size']}px: {job['warmup']} warm-up + {job['timed']} timed steps", flush=True)
    with tempfile.TemporaryDirectory() as out_dir:
        # Fresh processes for every configuration, so each peak memory is its own.
        mp.start_processes(time_worker, args=(processes, free_port(), job, out_dir), nprocs=processes,
                           join=True, start_method="spawn")
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def check_devices(cfg: DictConfig, plan: dict) -> None:
    """A one-line error, before any work, when ``devices=N`` cannot run here."""
    n = int(cfg.devices)
    have = plan["gpus"] if plan["kind"] == "gpu" else len(plan["cores"])
    unit = "GPUs" if plan["kind"] == "gpu" else "CPU cores (a CPU device is one core)"
    if n < 2 or n % 2:
        raise UserError(f"devices={n}: give an even number of devices, at least 2")
    if n > have:
        raise UserError(f"devices={n} needs {n} devices; this machine has {have} {unit}")
    if int(cfg.batch) % n:
        raise UserError(f"devices={n}: batch={cfg.batch} must split evenly over the {n} half-net replicas")


def time_scale(cfg: DictConfig, plan: dict) -> dict:
    """``devices=N``: half-Ndev (N data-parallel replicas of the half net) against full-Ndev
    (N/2 replicas of the tower pair), the trainer's placement, DDP and batch split
    (``devices`` checked first, :func:`check_devices`)."""
    n = int(cfg.devices)
    rows = {}
    for name, shape in scale_configurations(n).items():
        rows[name] = summarise_time(time_configuration(name, cfg, plan, shape), int(cfg.batch), int(cfg.input_size),
                                    replicas=shape["replicas"])
        rows[name].update(model=shape["model"], towers=shape["towers"], replicas=shape["replicas"])
        print(f"[{name}] median step {rows[name]['step_seconds']['median']:.3f} s", flush=True)
    half, full = rows[f"half-{n}dev"], rows[f"full-{n}dev"]
    return {"devices": n, "configurations": rows,
            "full/half step": full["step_seconds"]["median"] / half["step_seconds"]["median"]}


# -- the error part: the trainer and the evaluator as subprocesses ----------------------------------

def training_command(name: str, seed: int, epochs: int, run_dir: Path, cfg: DictConfig) -> list[str]:
    """The trainer for one configuration from ``seed``, on the benchmark's data and budget."""
    return train_command([f"model={MODEL_OF[name]}", f"seed={seed}", f"epochs={epochs}", f"threads={int(cfg.threads)}",
                          f"device={cfg.device}", f"hydra.run.dir={override_value(str(run_dir))}",
                          *data_overrides(cfg.data), *map(str, cfg.train_overrides)], DEVICES_OF[name])


def evaluate_command(checkpoint: str, run_dir: Path, cfg: DictConfig) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "evaluate.py"), f"checkpoint={override_value(checkpoint)}",
            f"output={override_value(str(run_dir / 'eval.json'))}", f"device={cfg.device}",
            *data_overrides(cfg.data), *map(str, cfg.eval_overrides)]


def _stream(cmd: list[str], log_path: Path, prefix: str) -> None:
    """Run ``cmd``, echoing its output with ``prefix`` and keeping it in ``log_path``."""
    print(f"{prefix} $ {' '.join(cmd)}", flush=True)
    status = run_logged(cmd, log_path, cwd=REPO, echo=prefix)
    if status:
        raise RuntimeError(f"{prefix} exited with status {status}; see {log_path}")


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
    _stream(training_command(name, seed, int(cfg.epochs), run_dir, cfg), logs / f"{run_dir.name}.train.log", prefix)
    summary = json.loads((run_dir / "summary.json").read_text())
    _stream(evaluate_command(summary["final_model"], run_dir, cfg), logs / f"{run_dir.name}.eval.log", prefix)
    return read_run(run_dir)


def summarise_errors(runs: list[dict], seeds: list[int]) -> dict:
    out = {"seeds": seeds, "runs": runs,
           "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in runs),
           "train_seconds": statistics.fmean(r["train_seconds"] for r in runs)}
    for crop in ("center", "ten_crop"):
        out[crop] = {k: spread([r[crop][k] for r in runs]) for k in ("top1_err", "top5_err")}
    return out


# -- the whole benchmark --------------------------------------------------------------------------

def run_benchmark(cfg: DictConfig, run_dir: Path) -> tuple[dict, dict[str, Path]]:
    """Both parts, then the three result files. Returns the results and the files' paths."""
    config.check(cfg)  # every number and word against conf/bench.yaml's schema (schema.py beside this file)
    plan = plan_devices(str(cfg.device))
    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise UserError("seeds must list at least one seed, e.g. seeds=[0]")
    if int(cfg.get("devices", 0)):
        check_devices(cfg, plan)
    settings = _settings(cfg, seeds)
    print(f"{NAME}: {plan['meaning']} ({', '.join(plan['names'])})", flush=True)
    sources = earlier_parts(cfg)  # timing_from / error_from: parts of earlier results, not measured again
    if "timing" in sources:
        time_part, scale, env, timed, _ = sources["timing"]
        settings.update(timed)
    else:
        time_part, env = _time_part(cfg, plan), environment(plan, cfg)
        scale = time_scale(cfg, plan) if int(cfg.get("devices", 0)) else None
    if "error" in sources:
        (error_part, source), failure = sources["error"], None
        settings.update(seeds=source["seeds"], epochs=source["epochs"], train_overrides=source["train_overrides"],
                        data=source["data_overrides"] or [str(source["data"])])
    else:
        error_part, failure = _error_part(cfg, plan, seeds, run_dir)

    results = build_results(time_part, error_part, env, settings, scale)
    results["sources"] = {part: sources[part][-1] if part in sources else None for part in ("timing", "error")}
    results["provenance"] = provenance.record(cfg)
    paths = write_results(str(cfg.output_dir), NAME, results, markdown(results), plot)
    print("\n" + markdown(results), flush=True)
    print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    if failure:
        raise UserError(f"the error part failed: {failure}")
    return results, paths


def earlier_parts(cfg: DictConfig) -> dict[str, tuple]:
    """The parts ``timing_from`` and ``error_from`` name, read before any work (sources.py)."""
    parts = {}
    if cfg.get("timing_from"):
        if cfg.skip_time or int(cfg.devices):
            raise UserError("timing_from takes the whole time part from a result: drop skip_time and devices")
        parts["timing"] = timing_from_result(Path(str(cfg.timing_from)))
    if cfg.get("error_from"):
        if cfg.skip_error:
            raise UserError("error_from takes the error part from a reproduce report: drop skip_error=true")
        parts["error"] = error_from_reproduce(Path(str(cfg.error_from)))
    return parts


def _settings(cfg: DictConfig, seeds: list[int]) -> dict:
    """What the results were measured with, as they record it."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    settings = {k: plain[k]
                for k in ("device", "batch", "input_size", "geometry", "num_classes", "warmup_steps", "timed_steps",
                          "rounds", "threads", "peak_matmul_size", "peak_matmul_seconds", "seeds", "epochs", "train_overrides",
                          "eval_overrides", "skip_time", "skip_error", "timing_from", "error_from")}
    settings["data"] = data_overrides(cfg.data)
    settings["speed"], settings["overlap"] = _speed_settings(cfg), bool(cfg.comm.overlap)
    settings["time_seed"] = seeds[0]  # weights, images and dropout masks of the timed steps
    return settings


def _time_part(cfg: DictConfig, plan: dict) -> dict[str, dict]:
    """Each configuration timed in every round (the configurations in turn), then merged."""
    rounds = int(cfg.rounds)
    time_part: dict[str, dict] = {}
    timed: dict[str, list[list[dict]]] = {}
    medians: dict[str, list[float]] = {}
    for round_ in range(rounds):  # the configurations in turn, round after round
        for name in CONFIGS:
            if cfg.skip_time:
                time_part[name] = {"skipped": "skip_time=true"}
            elif name in plan["skip"]:
                time_part[name] = {"skipped": plan["skip"][name]}
            else:
                timed.setdefault(name, []).append(time_configuration(name, cfg, plan))
                median = summarise_time(timed[name][-1], int(cfg.batch), int(cfg.input_size))["step_seconds"]["median"]
                medians.setdefault(name, []).append(median)
                print(f"[{name}] round {round_ + 1}/{rounds}: median step {median:.3f} s, "
                      f"{int(cfg.batch) / median:.1f} images/s", flush=True)
    for name, per_round in timed.items():
        time_part[name] = summarise_time(merge_rounds(per_round), int(cfg.batch), int(cfg.input_size))
        time_part[name]["round_medians"] = medians[name]
    return time_part


def _error_part(cfg: DictConfig, plan: dict, seeds: list[int], run_dir: Path) -> tuple[dict[str, dict], str | None]:
    """The trained pair from every seed, or why not; and the failure that stopped it, if any."""
    error_part: dict[str, dict] = {}
    for name in TRAINED:
        if cfg.skip_error:
            error_part[name] = {"skipped": "skip_error=true"}
        elif name in plan["skip"]:
            error_part[name] = {"skipped": plan["skip"][name]}
    if error_part:
        if len(error_part) < len(TRAINED):  # one of the pair cannot run: no comparison
            reason = "; ".join(e["skipped"] for e in error_part.values())
            error_part = {name: {"skipped": reason} for name in TRAINED}
        return error_part, None
    runs: dict[str, list[dict]] = {name: [] for name in TRAINED}
    try:
        for seed in seeds:
            for name in TRAINED:
                run = train_and_evaluate(name, seed, cfg, run_dir / f"{name}-seed{seed}")
                runs[name].append({"seed": seed, **run})
        return {name: summarise_errors(runs[name], seeds) for name in TRAINED}, None
    except (RuntimeError, UserError) as err:
        failure = str(err)
        return {name: {"skipped": f"failed: {failure}"} for name in TRAINED}, failure


def main(cfg: DictConfig, job: Job) -> None:  # noqa: ARG001 - its own one-line errors
    from hydra.core.hydra_config import HydraConfig

    try:
        run_benchmark(cfg, Path(HydraConfig.get().runtime.output_dir).resolve())
    except UserError as err:
        print(f"{NAME}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    run_hydra(main, config_name="bench", config_path="../../conf")
