"""bench-schemes: the 2012 towers, data parallelism and the 2014 hybrid, side by side on one net.

For each K of ``ks``, K gloo processes on the CPU run every scheme this checkout has, and rank 0
runs the one-process net on the same global batch in the same run, repetitions interleaved:
the step time as a ratio against one process (medians), the bytes per step and per image the
tracer counts (checked against :mod:`alexnet_mp.parallel.bytes_model`'s arithmetic from arch.py),
and the share of the step each process waited on communication. Beside them: the bytes table of
the full net at 224 px, the model of the step on real links (``link_model.py``) with its
prediction for these CPU runs set against what they measured, and the 2014 premise (conv and fc
shares of the FLOPs and the parameters) for the full and one-column nets.

    python benchmarks/schemes/bench_schemes.py                                 # outputs/benchmarks/
    python benchmarks/schemes/bench_schemes.py output_dir=benchmarks/results   # the committed result
    python benchmarks/schemes/bench_schemes.py ks=[2] repeats=3

Writes ``schemes.json``, ``schemes.md`` and ``schemes.png`` to ``output_dir``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import build_model
from alexnet_mp.job import provenance
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.net.arch import spec_for
from alexnet_mp.net.flops import layer_macs
from alexnet_mp.parallel import bytes_model
from alexnet_mp.parallel.placement import free_port
from benchmarks.schemes import link_model, report
from benchmarks.schemes.schema import register
from benchmarks.shared.machine import cpu_name
from benchmarks.schemes.workers import ONE, ONE_HALF, available, worker

register()  # the schema conf/ names (``- base_bench_schemes``), which the product's config package does not hold

NAME = "schemes"


def _run_k(k: int, job: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(worker, args=(k, free_port(), job, out_dir), nprocs=k, join=True, start_method="spawn")
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(k)]


def cpu_stretch(k: int, cores: int, other: float) -> float:
    """How much longer a process computes when K run at once than when one runs alone, on ``cores``
    shared with ``other`` runnable threads of other work (each thread gets an equal share of the
    cores, at most one): share(other + 1) / share(other + K)."""
    share = lambda n: min(1.0, cores / n)  # noqa: E731
    return share(other + 1) / share(other + k)


def _summarise(k: int, ranks: list[dict], job: dict, spec, macs: dict, other: float) -> dict:
    """Medians over the repetitions; bytes and waits per process; the model's CPU prediction."""
    one = statistics.median(r["step_s"] for r in ranks[0]["records"][ONE])
    optimizer = statistics.median(r["optimizer_s"] for r in ranks[0]["records"][ONE])
    half = statistics.median(r["step_s"] for r in ranks[0]["records"][ONE_HALF])
    # one process's step as a fixed cost plus a cost per image, from the batch and half of it
    per_image = max(one - half, 0.0) / (job["batch"] - job["batch"] // 2)
    fixed = max(one - per_image * job["batch"], 0.0)
    calibration = ranks[0]["calibration"]
    stretch = cpu_stretch(k, os.cpu_count() or 1, other)
    out = {"one_process_step_s": one, "one_process_half_batch_step_s": half, "one_process_fixed_s": fixed,
           "one_process_optimizer_s": optimizer, "calibration": calibration, "cpu_stretch": stretch, "schemes": {}}
    for scheme in job["schemes"]:
        per_rank = [r["records"][scheme] for r in ranks]
        step = statistics.median(rec["step_s"] for rec in per_rank[0])
        waited = [statistics.median(rec["waited_s"] for rec in recs) for recs in per_rank]
        handed = [sum(recs[0]["handed"].values()) for recs in per_rank]
        expected = [sum(m.handed_total for m in bytes_model.moves(
            scheme, spec, batch=job["batch"], k=k, input_size=job["input_size"], reduce_scatter=False,
            fc8=job["fc8"], rank=rank)) for rank in range(k)]
        wire = [recs[0]["wire"] for recs in per_rank]
        model = link_model.predict(scheme, spec, macs, one_process_s=one, batch=job["batch"], k=k,
                                   input_size=job["input_size"], bandwidth=calibration["bandwidth"],
                                   latency=calibration["latency_s"], reduce_scatter=False, fc8=job["fc8"],
                                   oversubscribed=stretch, fixed_s=fixed)
        waited_mean = sum(waited) / len(waited)
        out["schemes"][scheme] = {
            "step_s": step, "ratio_to_one_process": step / one, "steps_s": [rec["step_s"] for rec in per_rank[0]],
            "handed_bytes_per_step": handed, "arch_bytes_per_step": expected, "bytes_match_arch": handed == expected,
            "handed_bytes_per_image": handed[0] / job["batch"], "wire_bytes_per_step": wire,
            "wire_bytes_per_image": wire[0] / job["batch"],
            "waited_share": [w / step for w in waited], "by_collective": per_rank[0][0]["handed"],
            "model": model, "model_over_measured": model["step_s"] / step,
            # the model's two parts against the step's: waiting on communication, and the rest
            "measured_compute_s": step - waited_mean, "measured_comm_s": waited_mean,
            "compute_model_over_measured": model["compute_s"] / max(step - waited_mean, 1e-9),
            "comm_model_over_measured": model["comm_s"] / max(waited_mean, 1e-9)}
    return out


def run(cfg: DictConfig) -> dict:
    settings = OmegaConf.to_container(cfg, resolve=True)
    spec = spec_for(str(cfg.model), int(cfg.num_classes))
    macs = layer_macs(build_model(str(cfg.model), num_classes=int(cfg.num_classes), input_size=int(cfg.input_size)))
    schemes = [s for s in bytes_model.SCHEMES if available(s) and not (s == "towers" and spec.towers < 2)]
    missing = [s for s in bytes_model.SCHEMES if s not in schemes]
    job = {"model": str(cfg.model), "num_classes": int(cfg.num_classes), "input_size": int(cfg.input_size),
           "batch": int(cfg.batch), "fc8": str(cfg.fc8), "warmup": int(cfg.warmup), "steps": int(cfg.steps),
           "repeats": int(cfg.repeats), "schemes": schemes,
           # the link measured with the run's largest all-reduce: the data scheme's gradients
           "calibration_bytes": int(float(cfg.calibration_mb) * 2**20) if cfg.calibration_mb else
           sum(bytes_model.layer_parameters(spec, int(cfg.input_size)).values()) * bytes_model.FLOAT32}
    measured = {}
    for k in cfg.ks:
        print(f"{NAME}: K={k}: {', '.join(schemes)} and one process, {job['repeats']} interleaved repetitions",
              flush=True)
        load = os.getloadavg()[0]  # the machine's other runnable work, before this run
        measured[str(k)] = _summarise(int(k), _run_k(int(k), job), job, spec, macs, other=load)
        measured[str(k)]["load_average_1min"] = [load, os.getloadavg()[0]]  # before and after: the machine's other work
    full, one_tower = _premise_nets()
    full_macs = layer_macs(build_model("full"))
    result = {
        "benchmark": NAME, "created": _dt.datetime.now().isoformat(timespec="seconds"), "settings": settings,
        "environment": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                        "backend": "gloo", "threads_per_process": 1},
        "provenance": provenance.record(cfg),
        "not_measured": {s: "this checkout has no module for it" for s in missing},
        "measured": measured,
        "bytes_table_224": bytes_model.table(spec_for("full", 1000), ks=tuple(cfg.table_ks)),
        "links": [vars(link) for link in link_model.LINKS],
        "compute_for_links": {name: {"seconds_per_128": s, "source": src}
                              for name, (s, src) in link_model.COMPUTE.items()},
        "regimes": link_model.REGIMES,
        "projection": link_model.project(spec_for("full", 1000), full_macs),
        "premise": {name: bytes_model.conv_fc_shares(net_spec, net_macs) for name, (net_spec, net_macs) in
                    (("full", full), ("one_tower", one_tower)) if net_spec is not None},
    }
    paths = report.write(cfg.output_dir, NAME, result)
    print(report.markdown(result), flush=True)
    print(f"{NAME}: wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return result


def _premise_nets():
    """(spec, per-layer multiply-adds at 224 px) of the full net and of the one-column net of 2014
    (None where this checkout's arch.py has no ``one_tower``)."""
    full = (spec_for("full", 1000), layer_macs(build_model("full")))
    try:
        one = (spec_for("one_tower", 1000), layer_macs(build_model("one_tower")))
    except Exception:  # noqa: BLE001 - an arch.py without the one-column net: a UserError
        one = (None, None)
    return full, one


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: run(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="bench_schemes", config_path="../../conf")
