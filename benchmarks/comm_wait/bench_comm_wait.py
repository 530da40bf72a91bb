"""What the exchange's tracer counts as waited, on two real gloo processes.

The tracer (``alexnet_mp.parallel.comm_trace``) records, for every collective of a crossing layer, its
seconds from launch to completion and the part the tower waited for it. With blocking
collectives (``comm.overlap=false``) a tower waits for all of each, so the two must agree:
the check is that the median collective's waited / total is within ``tolerance`` of 1 on every
tower. It is a wall-clock figure, so a busy machine (one tower descheduled between a launch
and its wait) moves it; the overlapped exchange's figure is shown beside it (below 1 where
the tower computed while the bytes travelled). Training steps of the 7-class net (fc8 and the
logits split 4 + 3) at the smallest input the net takes, the same weights and batch on both towers.

    python benchmarks/comm_wait/bench_comm_wait.py
    python benchmarks/comm_wait/bench_comm_wait.py steps=20 tolerance=0.02

Writes ``bench-comm-wait.json`` and ``.md`` to ``output_dir`` (default outputs/benchmarks;
the published figures: ``output_dir=benchmarks/results``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import tempfile
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import build_model
from alexnet_mp.parallel import comm_trace
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.parallel.towers import parallelize
from alexnet_mp.parallel.placement import free_port
from benchmarks.shared.machine import cpu_name
from benchmarks.shared.output import write_results
from benchmarks.comm_wait.schema import register

register()  # the schema conf/ names (``- base_...``), which the product's config package does not hold

NAME = "bench-comm-wait"


def _ratios(rank: int, port: int, job: dict, out_dir: str) -> None:
    """One tower: waited / total of every collective of ``job["steps"]`` traced steps, per exchange."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same weights on both towers
        full = build_model("full", num_classes=job["num_classes"], input_size=job["input_size"])
        g = torch.Generator().manual_seed(1)
        size = job["input_size"]
        x = torch.randn(job["batch"], 3, size, size, generator=g) * 50
        y = torch.randint(0, job["num_classes"], (job["batch"],), generator=g)
        ratios = {}
        for overlap in (False, True):
            tower = parallelize(full, overlap=overlap)
            per_collective = []
            for step in range(job["steps"]):
                tower.zero_grad()
                trace = comm_trace.start(timeline=True)  # as the test of the tracer and bench-1gpu-vs-2gpu trace
                torch.manual_seed(100 + step)  # the same dropout masks on both towers
                F.cross_entropy(tower(x), y).backward()
                comm_trace.stop()
                per_collective += [trace.waited_seconds[k] / trace.seconds[k] for k in trace.seconds
                                   if trace.seconds[k]]
            ratios["blocking" if not overlap else "overlapped"] = per_collective
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(ratios))
    finally:
        dist.destroy_process_group()


def judge(ratios_by_rank: list[dict[str, list[float]]], tolerance: float) -> dict:
    """Each exchange's median waited / total per tower; met: the blocking exchange's within
    ``tolerance`` of 1 on every tower."""
    medians = {kind: [statistics.median(r[kind]) for r in ratios_by_rank] for kind in ("blocking", "overlapped")}
    worst = max(abs(m - 1.0) for m in medians["blocking"])
    return {"median_waited_over_total": medians, "collectives_per_tower": len(ratios_by_rank[0]["blocking"]),
            "target": f"blocking collectives: the median collective's waited / total within {tolerance:g} of 1 "
                      "on every tower", "value": max(medians["blocking"], key=lambda m: abs(m - 1.0)),
            "met": bool(worst <= tolerance)}


def markdown(r: dict) -> str:
    j = r["judged"]
    rows = [f"| {kind} | {' / '.join(f'{m:.3f}' for m in medians)} |"
            for kind, medians in j["median_waited_over_total"].items()]
    return "\n".join([f"# {NAME}", "",
                      f"Two gloo processes on {r['environment']['cpu']}, torch {r['environment']['torch']}, "
                      f"{r['created']}: {j['collectives_per_tower']} collectives per tower and exchange "
                      f"({r['settings']['steps']} training steps, batch {r['settings']['batch']}, "
                      f"{r['settings']['input_size']} px).", "",
                      "| exchange | median collective's waited / total, tower 0 / tower 1 |", "|---|---|", *rows, "",
                      "| target | value | met |", "|---|---|---|",
                      f"| {j['target']} | {j['value']:.3f} | {'yes' if j['met'] else 'no'} |"]) + "\n"


def run(cfg: DictConfig) -> dict:
    job = {k: int(cfg[k]) for k in ("steps", "batch", "input_size", "num_classes")}
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_ratios, args=(free_port(), job, out_dir), nprocs=2, join=True, start_method="spawn")
        ratios = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(2)]
    result = {"benchmark": NAME, "created": _dt.datetime.now().isoformat(timespec="seconds"),
              "settings": OmegaConf.to_container(cfg, resolve=True),
              "environment": {"cpu": cpu_name(), "torch": torch.__version__, "cores": os.cpu_count()},
              "ratios": ratios, "judged": judge(ratios, float(cfg.tolerance))}
    write_results(str(cfg.output_dir), NAME, result, markdown(result))
    j = result["judged"]
    print(markdown(result), flush=True)
    print(f"{NAME}: blocking median waited / total {j['value']:.3f}: {'met' if j['met'] else 'missed'}", flush=True)
    return result


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: run(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="bench_comm_wait", config_path="../../conf")
