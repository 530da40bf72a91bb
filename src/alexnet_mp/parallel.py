"""Where each process runs, and how the one-process net becomes this device's tower and back.

:func:`place` lays ``WORLD_SIZE`` processes out as a ``DeviceMesh`` with dimensions
("replica", "tower"): N processes of the full net are N/2 data-parallel replicas of the
tower pair, with the tower dimension innermost so that a pair sits on adjacent local ranks
of one machine and replicas span machines. ``model=half`` has one tower: N replicas.

``parallelize(full_model, group)`` keeps this rank's share of every layer of the
paper's two-tower net (Krizhevsky et al. 2012, sec. 3.2), copying the weights
from ``full_model``, and wires the crossing layers to :mod:`alexnet_mp.comm`.
``full_state_dict(tower)`` puts the shares back together into a state dict that
``build_model("full")`` loads.

    torchrun --nproc_per_node=2 launch/train.py        # one tower per process
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from alexnet_mp.comm import TowerExchange, gather_shards
from alexnet_mp.errors import UserError
from alexnet_mp.model import AlexNet

__all__ = ["Placement", "Towers", "init_towers", "join_process_group", "place", "parallelize", "full_state_dict",
           "shard_state_dict"]


@dataclass(frozen=True)
class Towers:
    """Where this process runs: its tower index, the tower count, device and backend."""

    rank: int
    world_size: int
    device: torch.device
    backend: str


def _attempt_store(timeout: datetime.timedelta | None):
    """torchrun's own store, with this attempt's keys apart from an earlier attempt's.

    After a restart (``--max-restarts``) the workers of the new attempt meet in the store of
    torchrun's agent, which still holds the keys of the attempt that failed; a worker then
    read the dead rank 0's address and failed to connect (two restarts in three, here, on
    gloo). A prefix per attempt keeps them apart. None outside torchrun's agent store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout or datetime.timedelta(minutes=30))
    return dist.PrefixStore(f"alexnet_mp/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def join_process_group(*, threads: int | None = None, device: str = "auto", init_method: str | None = None,
                       timeout_s: float | None = None) -> Towers:
    """Join the process group torchrun set up: NCCL with rank r on ``cuda:r`` when this
    machine shows a GPU for every local process, gloo on the CPU otherwise.

    On the CPU each rank uses ``threads`` threads (default 1), so two ranks on a
    two-core machine do not fight over cores.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    enough_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if device == "cuda" and not enough_gpus:
        raise UserError(f"device=cuda needs {local_world} GPUs on this machine (NCCL cannot put two ranks "
                        f"on one GPU); {torch.cuda.device_count()} visible")
    if device != "cpu" and enough_gpus:
        backend, dev = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        backend, dev = "gloo", torch.device("cpu")
        torch.set_num_threads(threads or 1)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        store = _attempt_store(timeout) if init_method is None else None
        if store is not None:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
        else:
            dist.init_process_group(backend, init_method=init_method, timeout=timeout)
    return Towers(dist.get_rank(), dist.get_world_size(), dev, backend)


@dataclass(frozen=True)
class Placement:
    """This process's place in the ("replica", "tower") mesh, and the groups of its two dimensions.

    Rank r holds tower ``r % towers`` of replica ``r // towers``. The tower group is this
    replica's pair (the crossing-layer exchanges); the replica group holds the same tower of
    every replica (gradient averaging). Replica 0 of each tower writes that tower's
    checkpoint shard (:attr:`writer`); rank 0 writes the files shared by the run (:attr:`main`).
    """

    rank: int
    world_size: int
    towers: int
    device: torch.device
    backend: str = "none"
    tower_group: Any = None
    replica_group: Any = None
    mesh: Any = None

    @property
    def replicas(self) -> int:
        return self.world_size // self.towers

    @property
    def tower(self) -> int:
        return self.rank % self.towers

    @property
    def replica(self) -> int:
        return self.rank // self.towers

    @property
    def writer(self) -> bool:
        return self.replica == 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def valid_process_counts(towers: int) -> str:
    return "1 (the whole net in one process) or an even number (2, 4, 6, ...: N/2 replicas of the tower pair)" \
        if towers == 2 else "any number (each process a data-parallel replica)"


def place(towers: int, *, threads: int | None = None, device: str = "auto", timeout_s: float | None = None,
          init_method: str | None = None) -> Placement:
    """Join the process group torchrun set up and lay the processes out as replicas of the
    tower pair (``towers=2``, the full net) or as plain replicas (``towers=1``, the half net).
    One process runs the whole net: no process group at all."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if threads:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda but no GPU is visible")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        return Placement(0, 1, 1, torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    if world % towers:
        raise UserError(f"the full net runs on {valid_process_counts(towers)}; got WORLD_SIZE={world}")
    t = join_process_group(threads=threads, device=device, init_method=init_method, timeout_s=timeout_s)
    mesh = init_device_mesh(t.device.type, (world // towers, towers), mesh_dim_names=("replica", "tower"))
    tower_group, replica_group = mesh.get_group("tower"), mesh.get_group("replica")
    if timeout_s:
        # The mesh's groups get torch's default timeout (30 min on gloo, 10 on NCCL), not the world
        # group's; they carry the exchange and the all-reduce, where a lost rank leaves the others.
        set_timeout = getattr(dist.distributed_c10d, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout
        for group in (tower_group, replica_group):
            set_timeout(datetime.timedelta(seconds=timeout_s), group)
    return Placement(t.rank, t.world_size, towers, t.device, t.backend,
                     tower_group=tower_group, replica_group=replica_group, mesh=mesh)


def init_towers(*, towers: int = 2, threads: int | None = None, device: str = "auto",
                init_method: str | None = None) -> Towers:
    """:func:`join_process_group`, after checking there is exactly one process per tower."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != towers:
        raise UserError(
            f"the two-tower net needs exactly {towers} processes, one per tower; got WORLD_SIZE={world} "
            f"(launch with torchrun --nproc_per_node={towers})"
        )
    return join_process_group(threads=threads, device=device, init_method=init_method)


def _check_parallelizable(full_model: AlexNet, world: int) -> None:
    if full_model.tower is not None:
        raise UserError("parallelize() takes the one-process net, not a tower")
    if full_model.spec.towers != world:
        raise UserError(
            f"the {full_model.spec.name} net has {full_model.spec.towers} tower(s) but the group has {world} "
            f"process(es); only the full net splits, one tower per process"
        )


def shard_state_dict(full_state: dict[str, torch.Tensor], tower: AlexNet) -> dict[str, torch.Tensor]:
    """This tower's share of a one-process state dict: every weight and bias is split on
    its output units (dim 0), which is exactly how the towers divide each layer."""
    out = {}
    for layer in tower.spec.layers:
        start, size = tower.local_offset(layer), tower.local_width(layer)
        for kind in ("weight", "bias"):
            out[f"{layer.name}.{kind}"] = full_state[f"{layer.name}.{kind}"].narrow(0, start, size).clone()
    return out


def parallelize(full_model: AlexNet, group=None, device: torch.device | str | None = None,
                overlap: bool = True) -> AlexNet:
    """The tower for this rank, holding its share of ``full_model``'s weights.

    Its ``forward(x)`` takes the whole batch (both towers see the same images) and
    returns the full logits on every rank. With ``overlap`` each crossing layer computes
    its own tower's block while the other tower's units are in flight, and sends its
    input gradient while it computes its weight gradient (:func:`alexnet_mp.comm.crossing_layer`);
    without, it gathers first, then computes (the same numbers up to rounding).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    _check_parallelizable(full_model, world)
    tower = AlexNet(
        full_model.spec,
        input_size=full_model.input_size,
        geometry=full_model.geometry,
        lrn=full_model.lrn_option,
        tower=(rank, world),
        exchange=TowerExchange(group, overlap=overlap),
        init=None,
    )
    tower.load_state_dict(shard_state_dict(full_model.state_dict(), tower))
    tower.train(full_model.training)
    return tower.to(device) if device is not None else tower


def full_state_dict(tower: AlexNet) -> dict[str, torch.Tensor]:
    """The one-process state dict assembled from every tower (a collective: call on all ranks)."""
    state = {}
    for layer in tower.spec.layers:
        sizes = tower.shares(layer)
        for kind in ("weight", "bias"):
            local = getattr(getattr(tower, layer.name), kind)
            state[f"{layer.name}.{kind}"] = gather_shards(local, sizes, tower.exchange.group).cpu()
    return state
