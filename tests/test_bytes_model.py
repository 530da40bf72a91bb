"""Bytes per step: what the tracer counts on real gloo processes equals the architecture's arithmetic.

One traced training step of each scheme on K real processes; every collective's bytes, as handed
to it per process (:mod:`alexnet_mp.parallel.comm_trace`), keyed by layer, direction, collective
and members, must equal what :mod:`alexnet_mp.parallel.bytes_model` derives from ``arch.py``'s
table alone -- DDP's gradient buckets included.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet_mp import build_model
from alexnet_mp.net.model import AlexNet
from alexnet_mp.net.arch import full_spec, half_spec
from alexnet_mp.parallel import bytes_model, comm_trace
from alexnet_mp.parallel.comm_trace import wire_bytes
from alexnet_mp.parallel.data_parallel import parallelize_data
from alexnet_mp.parallel.hybrid import parallelize_hybrid
from alexnet_mp.parallel.placement import place
from alexnet_mp.parallel.towers import parallelize
from distributed import run_ranks_together

SIZE, BATCH = 67, 8
# (scheme, the hybrid's fc8, classes): 7 classes split unevenly over the towers (4 + 3); fc8 split
# over 2 or 4 processes needs a multiple of 4
SCHEMES = {"towers": ("towers", "one", 7), "data": ("data", "one", 7), "hybrid": ("hybrid", "one", 7),
           "hybrid, fc8 split": ("hybrid", "split", 8)}


def _spec(classes: int):
    """The full net with every layer but fc8 8 times narrower: arch.py's structure, a fast step."""
    spec = full_spec(classes)
    return replace(spec, layers=tuple(replace(l, width=l.width // 8) if l.name != "fc8" else l for l in spec.layers))


def _step(name: str, rank: int, k: int):
    """One training step of scheme ``name`` on this process's rows of the global batch."""
    scheme, fc8, classes = SCHEMES[name]
    torch.manual_seed(0)
    full = AlexNet(_spec(classes), input_size=SIZE)
    if scheme == "hybrid":
        net = parallelize_hybrid(full, fc8=fc8)
        return lambda x, y: net.train_step(x[rank::k], y[rank::k], fc_update="step", fc_step=lambda: None,
                                           step=lambda: None)
    if scheme == "towers":
        placement = place(2)  # the replica x tower mesh
        net, group, replica, replicas = (parallelize(full, placement.tower_group), placement.replica_group,
                                         placement.replica, placement.replicas)
        if replicas > 1:  # the tower's replicas: data parallelism over its replica group
            net = parallelize_data(net, group)
            comm_trace.count_ddp(net, group)
    else:
        net, replica, replicas = parallelize_data(full), rank, k
        comm_trace.count_ddp(net)
    return lambda x, y: F.cross_entropy(net(x[replica::replicas]), y[replica::replicas]).backward()


def _counted(name: str, rank: int, k: int) -> dict:
    step = _step(name, rank, k)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g) * 50
    y = torch.randint(0, SCHEMES[name][2], (BATCH,), generator=g)
    trace = comm_trace.start()
    try:
        step(x, y)
    finally:
        comm_trace.stop()
    dist.barrier()
    return {"handed": dict(trace.handed), "bytes": dict(trace.bytes)}


def _expected(name: str, k: int, rank: int) -> tuple[dict, int]:
    """Bytes handed per (layer, direction, collective, K), and the ring's wire bytes, from the table."""
    scheme, fc8, classes = SCHEMES[name]
    moves = bytes_model.moves(scheme, _spec(classes), batch=BATCH, k=k, input_size=SIZE, reduce_scatter=False,
                              fc8=fc8, rank=rank)
    out: dict = {}
    for m in moves:
        key = (m.layer, m.direction, m.op, m.members)
        out[key] = out.get(key, 0) + m.handed_total
    return out, sum(m.wire_total for m in moves)


def _steps(rank: int, k: int) -> dict:
    return {name: _counted(name, rank, k) for name in SCHEMES}


@pytest.fixture(scope="module")
def counted():
    two = run_ranks_together({"k": (_steps, 2)}, world=2)["k"]
    four = run_ranks_together({"k": (_steps, 4)}, world=4)["k"]
    return {2: two, 4: four}


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_measured_bytes_equal_the_architecture_arithmetic(counted, scheme, k):
    for rank, result in enumerate(counted[k]):
        expected, wire = _expected(scheme, k, rank)  # a tower's share of fc8 depends on its rank (4 + 3)
        assert expected  # every scheme talks on K > 1
        assert result[scheme]["handed"] == expected, rank
        assert sum(result[scheme]["bytes"].values()) == wire, rank


def test_parameter_count_and_wire_bytes_from_the_table():
    for spec in (full_spec(1000), half_spec(1000)):
        assert sum(bytes_model.layer_parameters(spec).values()) == sum(
            p.numel() for p in build_model(spec.name, num_classes=1000).parameters())
    # a ring: all-gather (K-1) shares, reduce-scatter (K-1)/K, all-reduce 2 (K-1)/K of what it is handed
    assert [wire_bytes(op, 800, 4) for op in ("all_gather", "reduce_scatter", "all_reduce")] == [2400, 600, 1200]
    assert wire_bytes("all_reduce", 800, 1) == 0
    data = bytes_model.per_step(bytes_model.moves("data", full_spec(), batch=256, k=8))
    assert data["handed"] == 4 * 60_965_224 and data["wire"] == 2 * 7 * 4 * 60_965_224 // 8


def test_premise_shares_count_the_built_nets():
    """The 2014 premise's shares (conv against fc) add up what the built modules hold and compute."""
    from alexnet_mp.net.arch import spec_for
    from alexnet_mp.net.flops import layer_macs

    for name in ("full", "one_tower"):
        net = build_model(name, num_classes=1000)
        shares = bytes_model.conv_fc_shares(spec_for(name, 1000), layer_macs(net))
        conv = sum(p.numel() for l in net.spec.convs for p in getattr(net, l.name).parameters())
        total = sum(p.numel() for p in net.parameters())
        assert shares["parameters"]["total"] == total
        assert shares["parameters"]["conv"] == pytest.approx(conv / total, rel=1e-12)
        assert shares["flops"]["conv"] + shares["flops"]["fc"] == pytest.approx(1.0)
