"""Where each rank runs: every branch of the placement rules with faked GPUs and environments,
and a real two-process gloo group through the rendezvous store (docs/gpu.md)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from alexnet_mp.parallel import placement
from alexnet_mp.errors import UserError
from alexnet_mp.parallel.placement import DeviceView, choose_backend, gpu_index, local_view, wants_cuda
from helpers import one_line
from distributed import free_port


def _fake_gpus(monkeypatch, count: int, nccl=(2, 30, 7), uuids=None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(uuid=(uuids or [f"GPU-{n}" for n in range(8)])[i]))
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: nccl)


def _env(monkeypatch, **values) -> None:
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "NCCL_MULTI_RANK_GPU_ENABLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


@pytest.mark.parametrize("gpus, local_rank, local_world, index", [
    (2, 1, 2, 1),        # a GPU per local rank
    (8, 3, 4, 3),        # more GPUs than ranks
    (1, 1, 2, 0),        # per-task binding (or two ranks on one GPU)
    (1, None, None, 0),  # one GPU and a launcher that sets no LOCAL_RANK
    (2, None, 2, None),  # LOCAL_RANK unset: never RANK in its place
    (2, 0, 4, None),     # fewer GPUs than local ranks, more than one
    (4, 5, 4, None),     # a local rank past the GPUs
])
def test_gpu_index(gpus, local_rank, local_world, index):
    assert gpu_index(gpus, local_rank, local_world) == index


def test_local_rank_is_never_taken_from_rank(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    _env(monkeypatch, LOCAL_WORLD_SIZE=2)
    monkeypatch.setenv("RANK", "1")
    view = local_view(1, use_cuda=True)
    assert view.index is None and view.local_rank is None
    with pytest.raises(UserError) as err:
        choose_backend([view], "auto", True)
    assert "LOCAL_RANK=None" in one_line(err) and "rank 1" in str(err.value)


def test_local_view_reads_the_environment(monkeypatch):
    _fake_gpus(monkeypatch, 4)
    _env(monkeypatch, LOCAL_RANK=2, LOCAL_WORLD_SIZE=4, CUDA_VISIBLE_DEVICES="0,1,2,3")
    view = local_view(6, use_cuda=True)
    assert (view.rank, view.gpus, view.index, view.uuid, view.visible) == (6, 4, 2, "GPU-2", "0,1,2,3")
    assert local_view(6, use_cuda=False).index is None


@pytest.mark.parametrize("device, backend, gpus, message", [
    ("cuda", "auto", 0, "device=cuda but this machine shows no CUDA GPU"),
    ("cpu", "nccl", 2, "dist_backend=nccl needs the towers on GPUs"),
    ("auto", "nccl", 0, "dist_backend=nccl needs the towers on GPUs; on the CPU use dist_backend=gloo"),
])
def test_impossible_requests_are_one_line_errors(monkeypatch, device, backend, gpus, message):
    _fake_gpus(monkeypatch, gpus)
    with pytest.raises(UserError) as err:
        wants_cuda(device, backend)
    assert message in one_line(err)


@pytest.mark.parametrize("device, gpus, use", [("auto", 0, False), ("auto", 1, True), ("cpu", 2, False),
                                               ("cuda", 1, True)])
def test_wants_cuda(monkeypatch, device, gpus, use):
    _fake_gpus(monkeypatch, gpus)
    assert wants_cuda(device, "auto") is use


def _views(*specs) -> list[DeviceView]:
    return [DeviceView(rank, host, gpus, rank, len(specs), index, uuid) for rank, (host, gpus, index, uuid)
            in enumerate(specs)]


def test_cpu_is_gloo_and_distinct_gpus_are_nccl():
    assert choose_backend(_views(("a", 0, None, ""), ("a", 0, None, "")), "auto", False) == "gloo"
    per_rank = _views(("a", 2, 0, "GPU-0"), ("a", 2, 1, "GPU-1"))
    assert choose_backend(per_rank, "auto", True) == "nccl"
    assert choose_backend(per_rank, "gloo", True) == "gloo"
    # one GPU each on two hosts: the same UUID string never means the same GPU across hosts
    assert choose_backend(_views(("a", 1, 0, "GPU-0"), ("b", 1, 0, "GPU-0")), "nccl", True) == "nccl"


def test_a_rank_without_its_gpu_names_what_every_rank_sees():
    views = _views(("a", 2, 0, "GPU-0"), ("a", 2, 1, "GPU-1"), ("a", 2, None, ""), ("a", 2, None, ""))
    with pytest.raises(UserError) as err:
        choose_backend(views, "auto", True)
    text = one_line(err)
    assert all(f"rank {r} on a sees 2 GPU(s)" in text for r in range(4)) and "CUDA_VISIBLE_DEVICES" in text


SHARED = _views(("a", 1, 0, "GPU-0"), ("a", 1, 0, "GPU-0"))


def test_two_ranks_on_one_gpu_with_gloo():
    assert choose_backend(SHARED, "gloo", True) == "gloo"


@pytest.mark.parametrize("nccl, enabled, allowed", [
    ((2, 30, 7), "1", True), ((2, 31, 0), "1", True),
    ((2, 30, 7), None, False), ((2, 27, 5), "1", False), (None, "1", False)])
def test_two_ranks_on_one_gpu_under_nccl(monkeypatch, nccl, enabled, allowed):
    _fake_gpus(monkeypatch, 1, nccl=nccl)
    if nccl is None:
        monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (_ for _ in ()).throw(RuntimeError("no NCCL")))
    _env(monkeypatch, **({"NCCL_MULTI_RANK_GPU_ENABLE": enabled} if enabled else {}))
    for backend in ("auto", "nccl"):
        if allowed:
            assert choose_backend(SHARED, backend, True) == "nccl"
            continue
        with pytest.raises(UserError) as err:
            choose_backend(SHARED, backend, True)
        assert "use dist_backend=gloo, or NCCL 2.30+ with NCCL_MULTI_RANK_GPU_ENABLE=1" in one_line(err)


def test_nccl_version_as_an_int(monkeypatch):
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: 2708)
    assert placement.nccl_version() == (2, 7)


def test_describe_placement_names_backend_and_each_device(monkeypatch):
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 30, 7))
    towers = placement.Placement(0, 2, torch.device("cuda", 0), "nccl", tuple(SHARED))
    line = placement.describe_placement(towers)
    assert line.startswith("backend nccl (NCCL 2.30.7); rank 0 cuda:0") and "rank 1 cuda:0" in line


def _join(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    towers = placement.join_process_group(device="cpu", timeout_s=60)
    torch.save({"backend": towers.backend, "device": str(towers.device), "ranks": [v.rank for v in towers.views],
                "line": placement.describe_placement(towers)}, os.path.join(out, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_processes_meet_through_the_store_and_agree(tmp_path):
    mp.spawn(_join, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert all(r["backend"] == "gloo" and r["device"] == "cpu" and r["ranks"] == [0, 1] for r in results)
    assert results[0]["line"] == results[1]["line"] and "rank 1 cpu" in results[0]["line"]
