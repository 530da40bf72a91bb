"""Bytes per step: what the tracer counts on real gloo processes equals the architecture's arithmetic.

One traced training step of each scheme on K real processes; every collective's bytes, as handed
to it per process (:mod:`alexnet_mp.parallel.comm_trace`), keyed by layer, direction, collective
and members, must equal what :mod:`alexnet_mp.parallel.bytes_model` derives from ``arch.py``'s
table alone -- DDP's gradient buckets included.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet_mp import build_model
from alexnet_mp.net.arch import full_spec, half_spec
from alexnet_mp.parallel import bytes_model, comm_trace
from alexnet_mp.parallel.comm_trace import wire_bytes
from alexnet_mp.parallel.placement import place
from alexnet_mp.parallel.towers import parallelize
from torch.nn.parallel import DistributedDataParallel
from distributed import run_ranks_together

SIZE, CLASSES, BATCH = 67, 7, 8  # 7 classes: fc8 and the logits split unevenly (4 + 3)


def _scheme(scheme: str, rank: int, k: int):
    """The net of ``scheme`` on this process, and which replica of how many it is (its rows of the batch)."""
    torch.manual_seed(0)
    full = build_model("full", num_classes=CLASSES, input_size=SIZE)
    if scheme == "towers":
        placement = place(2)  # the replica x tower mesh
        net, group, replica, replicas = (parallelize(full, placement.tower_group), placement.replica_group,
                                         placement.replica, placement.replicas)
    else:
        net, group, replica, replicas = full, None, rank, k
    if replicas > 1:
        net.share_batch(replica, replicas)
        net = DistributedDataParallel(net, process_group=group)
        comm_trace.count_ddp(net, group)
    return net, replica, replicas


def _counted(scheme: str, rank: int, k: int) -> dict:
    net, replica, replicas = _scheme(scheme, rank, k)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g) * 50
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    rows = slice(replica * BATCH // replicas, (replica + 1) * BATCH // replicas)
    trace = comm_trace.start()
    try:
        F.cross_entropy(net(x[rows]), y[rows]).backward()
    finally:
        comm_trace.stop()
    dist.barrier()
    return {"handed": dict(trace.handed), "bytes": dict(trace.bytes)}


def _expected(scheme: str, k: int, spec, rank: int) -> dict:
    out: dict = {}
    for m in bytes_model.moves(scheme, spec, batch=BATCH, k=k, input_size=SIZE, reduce_scatter=False, rank=rank):
        key = (m.layer, m.direction, m.op, m.members)
        out[key] = out.get(key, 0) + m.handed_total
    return out


def _steps(rank: int, k: int) -> dict:
    return {scheme: _counted(scheme, rank, k) for scheme in ("towers", "data")}


@pytest.fixture(scope="module")
def counted():
    two = run_ranks_together({"k": (_steps, 2)}, world=2)["k"]
    four = run_ranks_together({"k": (_steps, 4)}, world=4)["k"]
    return {2: two, 4: four}


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("scheme", ["towers", "data"])
def test_measured_bytes_equal_the_architecture_arithmetic(counted, scheme, k):
    spec = full_spec(CLASSES)
    for rank, result in enumerate(counted[k]):
        expected = _expected(scheme, k, spec, rank)  # a tower's share of fc8 depends on its rank (4 + 3)
        assert expected  # every scheme talks on K > 1
        assert result[scheme]["handed"] == expected, rank
        wire = sum(wire_bytes(op, n, members) for (_, _, op, members), n in expected.items())
        assert sum(result[scheme]["bytes"].values()) == pytest.approx(wire, rel=1e-6, abs=64), rank


def test_parameter_count_and_wire_bytes_from_the_table():
    for spec in (full_spec(1000), half_spec(1000)):
        assert sum(bytes_model.layer_parameters(spec).values()) == sum(
            p.numel() for p in build_model(spec.name, num_classes=1000).parameters())
    # a ring: all-gather (K-1) shares, reduce-scatter (K-1)/K, all-reduce 2 (K-1)/K of what it is handed
    assert [wire_bytes(op, 800, 4) for op in ("all_gather", "reduce_scatter", "all_reduce")] == [2400, 600, 1200]
    assert wire_bytes("all_reduce", 800, 1) == 0
    data = bytes_model.per_step(bytes_model.moves("data", full_spec(), batch=256, k=8))
    assert data["handed"] == 4 * 60_965_224 and data["wire"] == 2 * 7 * 4 * 60_965_224 // 8
