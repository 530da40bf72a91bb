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

import dataclasses
import datetime
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from alexnet_mp.comm import TowerExchange, gather_shards
from alexnet_mp.errors import UserError
from alexnet_mp.model import AlexNet

__all__ = ["BACKENDS", "DeviceView", "Placement", "Towers", "choose_backend", "describe_placement", "gpu_index",
           "init_towers", "join_process_group", "local_view", "nccl_version", "place", "parallelize",
           "full_state_dict", "shard_state_dict", "wants_cuda"]


@dataclass(frozen=True)
class Towers:
    """Where this process runs: its tower index, the tower count, device and backend."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    views: tuple = ()


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


# NCCL lets two ranks of one job share a GPU from this version on, when NCCL_MULTI_RANK_GPU_ENABLE=1
# (experimental in NCCL; for checking on one-GPU machines, never for speed).
NCCL_MULTI_RANK = (2, 30)
BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class DeviceView:
    """What one rank sees: its host, how many GPUs, the one it would use (index, UUID)."""

    rank: int
    host: str
    gpus: int
    local_rank: int | None
    local_world: int | None
    index: int | None = None
    uuid: str = ""
    visible: str = "unset"

    def describe(self) -> str:
        where = f"cuda:{self.index}" if self.index is not None else "no usable GPU"
        return (f"rank {self.rank} on {self.host} sees {self.gpus} GPU(s) (CUDA_VISIBLE_DEVICES={self.visible}, "
                f"LOCAL_RANK={self.local_rank}, LOCAL_WORLD_SIZE={self.local_world}): {where}")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def gpu_index(gpus: int, local_rank: int | None, local_world: int | None) -> int | None:
    """The GPU a rank uses: ``cuda:LOCAL_RANK`` when it sees a GPU per local rank, ``cuda:0``
    when it sees exactly one (a launcher binding one GPU per task); None when neither holds."""
    if gpus == 1:
        return 0
    if local_rank is None or local_world is None or gpus < local_world or not 0 <= local_rank < gpus:
        return None
    return local_rank


def local_view(rank: int, use_cuda: bool) -> DeviceView:
    """This rank's :class:`DeviceView` (no GPU index or UUID when it will not use CUDA)."""
    local_rank, local_world = _env_int("LOCAL_RANK"), _env_int("LOCAL_WORLD_SIZE")
    gpus = torch.cuda.device_count() if use_cuda else 0
    index = gpu_index(gpus, local_rank, local_world) if use_cuda else None
    uuid = str(torch.cuda.get_device_properties(index).uuid) if index is not None else ""
    return DeviceView(rank, socket.gethostname(), gpus, local_rank, local_world, index, uuid,
                      os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))


def wants_cuda(device: str, backend: str) -> bool:
    """Whether this run puts the towers on GPUs; a one-line error where the request cannot work."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, not {device!r}")
    if backend not in BACKENDS:
        raise UserError(f"dist_backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UserError("device=cuda but this machine shows no CUDA GPU (torch.cuda.is_available() is False)")
    use_cuda = device == "cuda" or (device == "auto" and available)
    if backend == "nccl" and not use_cuda:
        raise UserError("dist_backend=nccl needs the towers on GPUs; on the CPU use dist_backend=gloo (or auto)"
                        + ("" if available else ": this machine shows no CUDA GPU"))
    return use_cuda


def nccl_version() -> tuple[int, ...] | None:
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return tuple(version) if isinstance(version, tuple) else (version // 1000, version % 1000 // 100)


def choose_backend(views: list[DeviceView], backend: str, use_cuda: bool) -> str:
    """The backend every rank uses, from every rank's view (so every rank decides alike);
    a one-line error naming what each rank sees when the ranks cannot be put on GPUs."""
    if not use_cuda:
        return "gloo"
    if any(v.index is None for v in views):
        raise UserError("no GPU per rank: " + "; ".join(v.describe() for v in views) + ". Give each rank one GPU "
                        "(CUDA_VISIBLE_DEVICES per task) or at least LOCAL_WORLD_SIZE GPUs, or use device=cpu")
    chosen = "nccl" if backend == "auto" else backend
    shared = len({(v.host, v.uuid) for v in views}) < len(views)
    if chosen == "nccl" and shared:
        version = nccl_version()
        enabled = os.environ.get("NCCL_MULTI_RANK_GPU_ENABLE") == "1"
        if version is None or version < NCCL_MULTI_RANK or not enabled:
            have = ".".join(map(str, version)) if version else "unknown"
            raise UserError(f"ranks share a GPU ({'; '.join(v.describe() for v in views)}) and NCCL {have} "
                            f"refuses that: use dist_backend=gloo, or NCCL 2.30+ with NCCL_MULTI_RANK_GPU_ENABLE=1")
    return chosen


def _all_views(mine: DeviceView, store, world: int) -> list[DeviceView]:
    """Every rank's view, through the rendezvous store (before the group exists) or the group."""
    if store is None:
        views: list = [None] * world
        dist.all_gather_object(views, mine)
        return views
    store = dist.PrefixStore("alexnet_mp/placement", store)
    store.set(str(mine.rank), json.dumps(dataclasses.asdict(mine)))
    return [DeviceView(**json.loads(store.get(str(r)))) for r in range(world)]


def join_process_group(*, threads: int | None = None, device: str = "auto", init_method: str | None = None,
                       timeout_s: float | None = None, backend: str = "auto") -> Towers:
    """Join the process group torchrun set up, each rank on its GPU (:func:`gpu_index`) under
    NCCL, or on the CPU under gloo (``threads`` threads each, default 1, so two ranks on a
    two-core machine do not fight over cores). ``backend`` auto, nccl or gloo (gloo on GPUs:
    it stages CUDA tensors through host memory)."""
    use_cuda = wants_cuda(device, backend)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
    store = None
    if not dist.is_initialized():
        store = _attempt_store(timeout) if init_method is None else None
        if store is None:
            store, rank, world = next(dist.rendezvous(init_method or "env://", rank, world,
                                                      **({"timeout": timeout} if timeout else {})))
    mine = local_view(dist.get_rank() if store is None else rank, use_cuda)
    views = _all_views(mine, store, dist.get_world_size() if store is None else world)
    chosen = choose_backend(views, backend, use_cuda)
    if use_cuda:
        dev = torch.device("cuda", mine.index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(threads or 1)
    if store is not None:
        dist.init_process_group(chosen, store=store, rank=rank, world_size=world, timeout=timeout,
                                device_id=dev if chosen == "nccl" else None)
    return Towers(dist.get_rank(), dist.get_world_size(), dev, chosen, tuple(views))


def describe_placement(towers: Towers) -> str:
    """The run's first line: the backend (and NCCL's version) and each rank's device."""
    version = nccl_version() if towers.backend == "nccl" else None
    name = towers.backend + (f" (NCCL {'.'.join(map(str, version))})" if version else "")
    ranks = ", ".join(f"rank {v.rank} {'cuda:' + str(v.index) if v.index is not None else 'cpu'}"
                      + (f" {v.uuid[:13]}" if v.uuid else "") + f" on {v.host}" for v in towers.views)
    return f"backend {name}; {ranks}"


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
    description: str = ""  # the run's first line: backend and each rank's device

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
          init_method: str | None = None, backend: str = "auto") -> Placement:
    """Join the process group torchrun set up and lay the processes out as replicas of the
    tower pair (``towers=2``, the full net) or as plain replicas (``towers=1``, the half net).
    One process runs the whole net: no process group at all."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if threads:
            torch.set_num_threads(threads)
        use_cuda = wants_cuda(device, backend)
        dev = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        return Placement(0, 1, 1, dev, description=f"one process, no process group; {dev}")
    if world % towers:
        raise UserError(f"the full net runs on {valid_process_counts(towers)}; got WORLD_SIZE={world}")
    t = join_process_group(threads=threads, device=device, init_method=init_method, timeout_s=timeout_s,
                           backend=backend)
    mesh = init_device_mesh(t.device.type, (world // towers, towers), mesh_dim_names=("replica", "tower"))
    tower_group, replica_group = mesh.get_group("tower"), mesh.get_group("replica")
    if timeout_s:
        # The mesh's groups get torch's default timeout (30 min on gloo, 10 on NCCL), not the world
        # group's; they carry the exchange and the all-reduce, where a lost rank leaves the others.
        set_timeout = getattr(dist.distributed_c10d, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout
        for group in (tower_group, replica_group):
            set_timeout(datetime.timedelta(seconds=timeout_s), group)
    return Placement(t.rank, t.world_size, towers, t.device, t.backend, tower_group=tower_group,
                     replica_group=replica_group, mesh=mesh, description=describe_placement(t))


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
