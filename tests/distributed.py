"""Run functions in real gloo process groups, one process per rank, for the tests (spawned
processes import this module, so it stays small)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alexnet_mp.errors import UserError
from alexnet_mp.parallel.placement import Placement, free_port, join_process_group


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(rank, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, *args, world: int = 2) -> list:
    """Call ``fn(rank, *args)`` on ``world`` processes joined in a gloo group; return each rank's result."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world, free_port(), out_dir, fn, args), nprocs=world, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def init_towers(*, towers: int = 2, threads: int | None = None, device: str = "auto",
                init_method: str | None = None) -> Placement:
    """:func:`alexnet_mp.parallel.placement.join_process_group`, after checking there is exactly one process per tower."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != towers:
        raise UserError(
            f"the two-tower net needs exactly {towers} processes, one per tower; got WORLD_SIZE={world} "
            f"(launch with torchrun --nproc_per_node={towers})"
        )
    return join_process_group(threads=threads, device=device, init_method=init_method)


def _in_turn(rank: int, calls: dict) -> dict:
    return {name: fn(rank, *args) for name, (fn, *args) in calls.items()}


def run_ranks_together(calls: dict[str, tuple], world: int = 2) -> dict[str, list]:
    """Several ``name: (fn, *args)`` in one gloo group, one after another: the processes start once
    for all of them (their start-up costs more than a tiny comparison). Returns ``name: [each rank's result]``.
    Each ``fn`` leaves the process as it found it (any module setting it changes, it restores)."""
    per_rank = run_ranks(_in_turn, calls, world=world)
    return {name: [r[name] for r in per_rank] for name in calls}
