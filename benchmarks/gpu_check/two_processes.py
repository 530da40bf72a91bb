"""The device check's two-process part: the two towers as two processes sharing one GPU.

Two ranks on one GPU say nothing about two GPUs' speed: this checks that the main job runs,
not how fast. The backend is NCCL where the device's NCCL (2.30+) lets two ranks share a GPU
(``NCCL_MULTI_RANK_GPU_ENABLE=1``, experimental in NCCL), else gloo (docs/gpu.md). Parts,
each recorded as it ends (``write()``), each skipped once ``deadline`` has passed:

- ``exact``: the towers equal the one-process net (logits, loss, every gradient) within the
  exactness tests' bound (tests/test_parallel.py), overlap on and off;
- ``step``: the two-process step row (images/s of the pair, batch 128);
- ``runs``: ``launch/train.py`` on 2 processes, >= 100 steps on synthetic data under
  ``set_sync_debug_mode`` (``sync_free``), then killed (-9) and resumed: bit-identical final
  weights with ``deterministic=true``, eager, ``compile=true`` and ``compile_mode=reduce-overhead``,
  and the largest difference without ``deterministic``.

Its settings are the device check's (``conf/gpu_check.yaml``); it runs alone as

    python benchmarks/gpu_check/gpu_check.py device=cpu skip_steps=true skip_data=true lrn_batch=0 \
        train_steps=12 kill_at=7 two_batch=4 two_steps=1 variants=[eager]     # a CPU dry run
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from alexnet_mp.parallel.placement import free_port, nccl_shares_gpus, nccl_version
from benchmarks.shared.exactness import rel_diff
from benchmarks.shared.machine import PAPER_MODEL, PAPER_OPTIM, PAPER_SCHEDULE, REPO

TOL = 1e-5  # tests/test_parallel.py's bound for the two-process comparisons


def _worker(rank: int, port: int, device: str, backend: str, env: dict, batch: int, steps: int, out: str) -> None:
    os.environ.update(env, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from alexnet_mp import build_model
    from alexnet_mp.parallel import towers as parallel
    from alexnet_mp.parallel import placement
    from alexnet_mp.train import Speed, build_run_state, train_step

    towers = placement.join_process_group(device=device, backend=backend, timeout_s=120)
    dev = towers.device
    result: dict = {"placement": placement.describe_placement(towers), "diffs": {}}
    for overlap in (True, False):
        torch.manual_seed(0)
        full = build_model("full", num_classes=10, input_size=67).to(dev)
        tower = parallel.parallelize(full, device=dev, overlap=overlap)
        g = torch.Generator().manual_seed(1)
        x = (torch.randn(8, 3, 67, 67, generator=g) * 50).to(dev)
        y = torch.randint(0, 10, (8,), generator=g).to(dev)
        outs = []
        for net in (full, tower):
            torch.manual_seed(100)  # the same dropout masks
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            outs.append(loss.detach())
        ref = parallel.shard_state_dict({n: p.grad for n, p in full.named_parameters()}, tower)
        diffs = {"loss": rel_diff(outs[1], outs[0])}
        diffs.update({n: rel_diff(p.grad, ref[n]) for n, p in tower.named_parameters()})
        result["diffs"][f"overlap={overlap}"] = max(diffs.values())
    speed = Speed(precision="bf16" if dev.type == "cuda" else "fp32", channels_last=dev.type == "cuda")
    # The two processes are the two towers of one net (the default group), no replicas.
    state = build_run_state(PAPER_MODEL, PAPER_OPTIM, PAPER_SCHEDULE, num_classes=1000, input_size=224, seed=0,
                            device=dev, speed=speed, placement=dataclasses.replace(towers, towers=2))
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, 3, 224, 224, generator=g) * 60).to(dev)
    y = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    for i in range(2 + steps):
        if i == 2:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            start = time.perf_counter()
        train_step(state, x, y)
    torch.cuda.synchronize() if dev.type == "cuda" else None
    result["step"] = {"configuration": "full-2proc-1gpu", "batch": batch, "precision": speed.precision,
                      "channels_last": speed.channels_last, "compile": False,
                      "images_per_s": batch * steps / (time.perf_counter() - start),
                      "note": "two ranks on one GPU: says nothing about two GPUs' speed"}
    torch.save(result, os.path.join(out, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def exact_and_step(device: str, backend: str, env: dict, batch: int, steps: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(port, device, backend, env, batch, steps, out), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(out, f"{r}.pt"), weights_only=False) for r in range(2)]
    diffs = {k: max(r["diffs"][k] for r in ranks) for k in ranks[0]["diffs"]}
    return {"placement": ranks[0]["placement"], "max_rel_diff": diffs, "exact": all(d < TOL for d in diffs.values()),
            "bound": TOL, "step": ranks[0]["step"]}


def _launch(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "benchmarks" / "gpu_check" / "train_watched.py"), *args]
    try:
        return subprocess.run(cmd, cwd=REPO, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:  # recorded as a failed run, never the end of the check
        out = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        return subprocess.CompletedProcess(cmd, 124, out(err.stdout), out(err.stderr) + f"\ntimed out after {timeout:.0f} s")


def _final(run: Path) -> dict | None:
    path = run / "model_final.pt"
    return torch.load(path, weights_only=True)["state_dict"] if path.exists() else None


def _tail(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).strip().splitlines()[-3:]


def straight_kill_resume(work: Path, name: str, base: list[str], env: dict, kill_at: int, timeout: float,
                         reference: dict | None = None) -> dict:
    """A straight run, and one killed (-9) after ``kill_at`` steps and resumed; their final weights."""
    straight, crashed = work / f"{name}-straight", work / f"{name}-crash"
    counts = work / f"{name}-steps"
    start = time.perf_counter()
    first = _launch([*base, f"hydra.run.dir={straight}"], {**env, "CHECK_STEPS_FILE": str(counts)}, timeout)
    row: dict = {"straight_rc": first.returncode, "straight_seconds": time.perf_counter() - start}
    if first.returncode:
        return {**row, "error": _tail(first)}
    row.update(json.loads(Path(f"{counts}.0").read_text()))
    killed = _launch([*base, f"hydra.run.dir={crashed}"], {**env, "CHECK_KILL_AT": str(kill_at)}, timeout)
    resumed = _launch([*base, f"hydra.run.dir={crashed}", "resume=true"], env, timeout)
    row.update(killed_rc=killed.returncode, resumed_rc=resumed.returncode)
    a, b = _final(straight), _final(crashed)
    if b is None:
        return {**row, "error": _tail(resumed)}
    row["bit_identical"] = all(torch.equal(a[k], b[k]) for k in a)
    row["max_rel_diff"] = max(rel_diff(b[k], a[k]) for k in a)
    if reference is not None:
        row["max_rel_diff_from_deterministic"] = max(rel_diff(a[k], reference[k]) for k in a)
    row["final"] = a
    return row


def runs(args, backend: str, env: dict, result: dict, write, deadline: float) -> None:
    """``launch/train.py`` runs: sync-free steps, kill -9 and resume, eager and compiled."""
    base = ["experiment=smoke", f"device={args.device}", f"dist_backend={backend}", "epochs=1",
            f"data.train_size={16 * args.train_steps}", "checkpoint.every_steps=5", "dist_timeout_s=120"]
    sync = "error" if backend == "nccl" else "warn"  # gloo stages CUDA tensors through the host: count instead
    # cuBLAS reads its workspace setting when it starts, which may be before the trainer's switch.
    env = {**env, "CHECK_SYNC_DEBUG": sync, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    variants = [("eager", ["deterministic=true"]), ("compile", ["deterministic=true", "compile=true"]),
                ("reduce-overhead", ["deterministic=true", "compile=true", "compile_mode=reduce-overhead"]),
                ("eager-nondeterministic", [])]
    reference = None
    with tempfile.TemporaryDirectory(prefix="gpu-check-two-") as tmp:
        for name, extra in variants:
            if name not in args.variants:
                continue
            if time.perf_counter() > deadline:
                result["runs"][name] = {"skipped": "past the deadline"}
                continue
            row = straight_kill_resume(Path(tmp), name, [*base, *extra], env, args.kill_at, args.run_timeout_s,
                                       reference if name == "eager-nondeterministic" else None)
            final = row.pop("final", None)
            reference = final if name == "eager" else reference
            result["runs"][name] = {**row, "sync_debug": sync}
            print(f"[gpu-check] two processes, {name}: {row}", flush=True)
            write()
    eager = result["runs"].get("eager", {})
    checked = args.device == "cuda"  # on the CPU there is no device to wait for: not checked
    result["sync_free"] = None if not checked else bool(eager.get("steps", 0) >= args.train_steps
                                                        and eager.get("syncs") == 0 and eager.get("straight_rc") == 0)
    result["steps"] = eager.get("steps", 0)


def shared_gpu_backend(device: str) -> tuple[str, dict]:
    """The backend for two ranks on one GPU, and the environment it needs: NCCL where its
    version allows sharing, else gloo (which stages CUDA tensors through host memory)."""
    if device == "cuda" and nccl_shares_gpus(nccl_version()):
        return "nccl", {"NCCL_MULTI_RANK_GPU_ENABLE": "1"}
    return "gloo", {}


def two_processes(args, write, result: dict) -> None:
    """Fill ``result`` (the ``two_processes`` entry of gpu-check.json) part by part."""
    deadline = time.perf_counter() + args.two_deadline_s
    backend, env = shared_gpu_backend(args.device)
    result.update(backend=backend, env=env, exact=None, sync_free=None, steps=0, runs={})
    try:
        r = exact_and_step(args.device, backend, env, args.two_batch, args.two_steps)
        result.update(exact=r["exact"], exact_detail=r)
    except Exception as err:  # noqa: BLE001  (recorded; the other parts still run)
        result["exact_error"] = f"{type(err).__name__}: {err}"[:500]
    write()
    runs(args, backend, env, result, write, deadline)
    write()
