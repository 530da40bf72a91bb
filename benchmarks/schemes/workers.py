"""The processes of bench-schemes: K gloo processes on the CPU, each scheme's training steps timed
in turn, the one-process net beside them (on rank 0, the others waiting), repetitions interleaved.

Each scheme is built by the product's own ``parallelize_*`` over the same one-process net and
trained with SGD on the same global batch; the tracer (:mod:`alexnet_mp.parallel.comm_trace`) is on
for the timed steps, so every collective's bytes and the seconds the process waited on it are
counted (DDP's buckets through :func:`alexnet_mp.parallel.comm_trace.count_ddp`). A scheme whose
module this checkout lacks is skipped and said so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet_mp import build_model
from alexnet_mp.parallel import comm_trace
from alexnet_mp.parallel.comm_trace import wire_bytes

__all__ = ["available", "worker", "ONE", "ONE_HALF"]

ONE, ONE_HALF = "one process", "one process, half the batch"  # the second: its cost per image and fixed cost


def available(scheme: str) -> bool:
    """Whether this checkout has ``scheme``'s module."""
    module = {"towers": "alexnet_mp.parallel.towers", "data": "alexnet_mp.parallel.data_parallel",
              "hybrid": "alexnet_mp.parallel.hybrid"}[scheme]
    return importlib.util.find_spec(module) is not None


def _net(job: dict):
    torch.manual_seed(0)  # the same weights everywhere
    return build_model(job["model"], num_classes=job["num_classes"], input_size=job["input_size"])


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


def _scheme_step(scheme: str, rank: int, k: int, job: dict):
    """A function running one training step of ``scheme`` on this process's rows of ``(x, y)``."""
    full = _net(job)
    if scheme == "towers":
        from alexnet_mp.parallel.data_parallel import parallelize_data
        from alexnet_mp.parallel.placement import place
        from alexnet_mp.parallel.towers import parallelize

        placement = place(full.spec.towers)  # the replica x tower mesh, as training lays it out
        net, replica, replicas = parallelize(full, placement.tower_group), placement.replica, placement.replicas
        if replicas > 1:  # the tower's replicas: data parallelism over its replica group
            net = parallelize_data(net, placement.replica_group)
            comm_trace.count_ddp(net, placement.replica_group)
    elif scheme == "data":
        from alexnet_mp.parallel.data_parallel import parallelize_data

        net, replica, replicas = parallelize_data(full), rank, k
        comm_trace.count_ddp(net)
    else:
        from alexnet_mp.parallel.hybrid import parallelize_hybrid

        net = parallelize_hybrid(full, fc8=job["fc8"])
        opt = _sgd(net.parameters())

        def hybrid_step(x, y):
            b = len(y) // k
            opt.zero_grad(set_to_none=True)
            net.train_step(x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b], fc_update="step",
                           fc_step=opt.step, step=opt.step)
        return hybrid_step
    opt = _sgd(net.parameters())

    def step(x, y):
        b = len(y) // replicas
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[replica * b:(replica + 1) * b]), y[replica * b:(replica + 1) * b]).backward()
        opt.step()
    return step


def _one_process_step(job: dict):
    """The one-process step; it adds the seconds of its optimizer steps to ``step.optimizer_s``."""
    net = _net(job)
    opt = _sgd(net.parameters())

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        start = time.perf_counter()
        opt.step()
        step.optimizer_s += time.perf_counter() - start
    step.optimizer_s = 0.0
    return step


def _calibrate(k: int, nbytes: int, repeats: int = 5) -> dict:
    """This group's gloo link: seconds of an all-reduce of ``nbytes`` and of 4 bytes (the median)."""
    out = {}
    for name, n in (("large", nbytes), ("small", 4)):
        t = torch.ones(max(n // 4, 1))
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - start)
        out[name] = sorted(times)[len(times) // 2]
    large_wire = wire_bytes(comm_trace.ALL_REDUCE, nbytes, k)
    latency = out["small"] / (2 * (k - 1))
    return {"all_reduce_bytes": nbytes, "all_reduce_s": out["large"], "small_all_reduce_s": out["small"],
            "latency_s": latency, "bandwidth": large_wire / max(out["large"] - 2 * (k - 1) * latency, 1e-9)}


def worker(rank: int, k: int, port: int, job: dict, out_dir: str) -> None:
    """Rank ``rank`` of ``k``: every configuration's repetitions, written to ``out_dir/rank{rank}.json``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(k), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=k)
    try:
        g = torch.Generator().manual_seed(1)
        batch, size = job["batch"], job["input_size"]
        x = torch.randn(batch, 3, size, size, generator=g) * 50
        y = torch.randint(0, job["num_classes"], (batch,), generator=g)
        steps = {ONE: _one_process_step(job) if rank == 0 else None,
                 ONE_HALF: _one_process_step(job) if rank == 0 else None}
        steps.update({s: _scheme_step(s, rank, k, job) for s in job["schemes"]})
        order = list(steps)
        records: dict = {name: [] for name in order}
        for rep in range(job["repeats"]):
            for name in order[rep % len(order):] + order[:rep % len(order)]:  # interleaved, rotating
                rows = slice(0, batch // 2) if name == ONE_HALF else slice(None)
                records[name].append(_timed(name, steps[name], x[rows], y[rows], rank, job))
        calibration = _calibrate(k, job["calibration_bytes"])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"records": records, "calibration": calibration}))
    finally:
        dist.destroy_process_group()


def _timed(name: str, step, x, y, rank: int, job: dict) -> dict:
    """``job["warmup"]`` untimed and ``job["steps"]`` timed steps (the others wait while rank 0
    runs the one-process net); seconds per step, and per step the bytes and waited seconds traced."""
    alone = name in (ONE, ONE_HALF)
    dist.barrier()
    if alone and rank != 0:
        dist.barrier()
        return {}
    for _ in range(job["warmup"]):
        step(x, y)
    if not alone:
        dist.barrier()
    trace = comm_trace.start() if not alone else None
    start = time.perf_counter()
    for _ in range(job["steps"]):
        step(x, y)
    if not alone:
        dist.barrier()  # the step of K processes ends when the last one ends
    seconds = (time.perf_counter() - start) / job["steps"]
    comm_trace.stop()
    if alone:
        dist.barrier()
        optimizer = step.optimizer_s / (job["warmup"] + job["steps"])
        step.optimizer_s = 0.0
        return {"step_s": seconds, "optimizer_s": optimizer}
    n = job["steps"]
    handed: dict = {}
    for (layer, direction, op, members), b in trace.handed.items():
        key = f"{layer}.{direction}.{op}.{members}"
        handed[key] = handed.get(key, 0) + b // n
    return {"step_s": seconds, "handed": handed, "wire": trace.total_bytes() / n,
            "waited_s": trace.total_waited_seconds() / n, "comm_s": trace.total_seconds() / n}
