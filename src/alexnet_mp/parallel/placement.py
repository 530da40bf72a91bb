"""Where each process runs: the rendezvous, each rank's device and the backend, and the
("replica", "tower") layout of the job.

:func:`place` joins the process group torchrun set up and lays ``WORLD_SIZE`` processes out
as a ``DeviceMesh`` with dimensions ("replica", "tower"): N processes of the full net are N/2
data-parallel replicas of the tower pair, with the tower dimension innermost so that a pair
sits on adjacent local ranks of one machine and replicas span machines. ``model=half`` has
one tower: N replicas. Each rank uses the GPU of its local rank, or the one GPU it sees
(:func:`gpu_index`), and every rank chooses the same backend from every rank's view
(:func:`choose_backend`). How the net is split over the towers is :mod:`alexnet_mp.parallel.towers`.

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

from alexnet_mp.errors import UserError

__all__ = ["NCCL_MULTI_RANK", "DeviceView", "Placement", "choose_backend", "describe_placement", "free_port", "gpu_index",
           "join_process_group", "local_view", "nccl_shares_gpus", "nccl_version", "place",
           "valid_process_counts", "wants_cuda"]

# NCCL lets two ranks of one job share a GPU from this version on, when NCCL_MULTI_RANK_GPU_ENABLE=1
# (experimental in NCCL; for checking on one-GPU machines, never for speed).
NCCL_MULTI_RANK = (2, 30)


def free_port() -> int:
    """A free TCP port on this machine, for the rendezvous of processes spawned here (the traced
    step of launch/figure2.py, :mod:`alexnet_mp.paper.timeline`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Placement:
    """This process's place: its rank, the device and backend, every rank's view, and its
    place in the ("replica", "tower") mesh with the groups of its two dimensions.

    Rank r holds tower ``r % towers`` of replica ``r // towers``. The tower group is this
    replica's pair (the crossing-layer exchanges); the replica group holds the same tower of
    every replica (gradient averaging). Replica 0 of each tower writes that tower's
    checkpoint shard (:attr:`writer`); rank 0 writes the files shared by the run (:attr:`main`).
    One process has no process group, no views and no groups.
    """

    rank: int
    world_size: int
    device: torch.device
    backend: str = "none"
    views: tuple = ()  # every rank's DeviceView, in rank order
    towers: int = 1
    tower_group: Any = None
    replica_group: Any = None
    mesh: Any = None

    @property
    def description(self) -> str:
        """The run's first line: backend and each rank's device."""
        return describe_placement(self)

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


def _attempt_store(timeout: datetime.timedelta | None):
    """torchrun's own store, with this attempt's keys apart from an earlier attempt's.

    After a restart (``--max-restarts``) the workers of the new attempt meet in the store of
    torchrun's agent, which still holds the keys of the attempt that failed; a worker then
    could read the dead rank 0's address and fail to connect. A prefix per attempt keeps them
    apart. None outside torchrun's agent store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout or datetime.timedelta(minutes=30))
    return dist.PrefixStore(f"alexnet_mp/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


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


_NO_GPU = "device=cuda but this machine shows no CUDA GPU (torch.cuda.is_available() is False)"


def single_device(device: str) -> torch.device:
    """The device of a one-process command (evaluate, predict, Figure 1): ``auto`` is the GPU
    where there is one, else the CPU; ``cuda`` without a GPU is :func:`wants_cuda`'s error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(_NO_GPU)
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def wants_cuda(device: str, backend: str) -> bool:
    """Whether this run puts the towers on GPUs; a one-line error where the request cannot work.
    ``device`` and ``backend`` are words the schema has checked (:mod:`alexnet_mp.config.train`)."""
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UserError(_NO_GPU)
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


def nccl_shares_gpus(version: tuple[int, ...] | None) -> bool:
    """Whether this NCCL lets two ranks of a job share a GPU (with NCCL_MULTI_RANK_GPU_ENABLE=1)."""
    return version is not None and version >= NCCL_MULTI_RANK


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
        if not nccl_shares_gpus(version) or os.environ.get("NCCL_MULTI_RANK_GPU_ENABLE") != "1":
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
                       timeout_s: float | None = None, backend: str = "auto") -> Placement:
    """Join the process group torchrun set up, each rank on its GPU (:func:`gpu_index`) under
    NCCL, or on the CPU under gloo (``threads`` threads each, default 1, so two ranks on a
    two-core machine do not fight over cores). ``backend`` auto, nccl or gloo (gloo on GPUs:
    it stages CUDA tensors through host memory). The :class:`Placement` it returns has no
    tower layout yet (:func:`place` adds it)."""
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
    return Placement(dist.get_rank(), dist.get_world_size(), dev, chosen, tuple(views))


def describe_placement(placement: Placement) -> str:
    """The run's first line: the backend (and NCCL's version) and each rank's device."""
    if not placement.views:
        return f"one process, no process group; {placement.device}"
    version = nccl_version() if placement.backend == "nccl" else None
    name = placement.backend + (f" (NCCL {'.'.join(map(str, version))})" if version else "")
    ranks = ", ".join(f"rank {v.rank} {'cuda:' + str(v.index) if v.index is not None else 'cpu'}"
                      + (f" {v.uuid[:13]}" if v.uuid else "") + f" on {v.host}" for v in placement.views)
    return f"backend {name}; {ranks}"


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
        return Placement(0, 1, dev)
    if world % towers:
        raise UserError(f"the full net runs on {valid_process_counts(towers)}; got WORLD_SIZE={world}")
    joined = join_process_group(threads=threads, device=device, init_method=init_method, timeout_s=timeout_s,
                                backend=backend)
    mesh = init_device_mesh(joined.device.type, (world // towers, towers), mesh_dim_names=("replica", "tower"))
    tower_group, replica_group = mesh.get_group("tower"), mesh.get_group("replica")
    if timeout_s:
        # The mesh's groups get torch's default timeout (30 min on gloo, 10 on NCCL), not the world
        # group's; they carry the exchange and the all-reduce, where a lost rank leaves the others.
        set_timeout = getattr(dist.distributed_c10d, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout
        for group in (tower_group, replica_group):
            set_timeout(datetime.timedelta(seconds=timeout_s), group)
    return dataclasses.replace(joined, towers=towers, tower_group=tower_group, replica_group=replica_group, mesh=mesh)
