"""Crossing layers that overlap their exchange with their own compute, in two real gloo processes.

The overlapped layer (``comm.crossing_layer``) must give the numbers of the simple path
(gather every tower's units, then the layer) and of the one-process layer, count the same
bytes under the opt-in tracer, and record for every crossing layer and direction both the
collective's seconds and the part the tower waited for; without the tracer, nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet_mp import build_model
from alexnet_mp.parallel import collectives
from alexnet_mp.parallel import comm
from alexnet_mp.parallel import comm_trace
from alexnet_mp.net.arch import feature_map_sizes, split_sizes
from alexnet_mp.parallel.comm import TowerExchange
from alexnet_mp.parallel.comm_trace import CommTrace
from alexnet_mp.parallel.towers import parallelize, shard_state_dict
from helpers import rel_diff
from distributed import run_ranks_together

TOL = 1e-5
CROSSING = ("conv3", "fc6", "fc7", "fc8")
BATCH, SIZE, CLASSES = 4, 67, 7  # 7 classes: fc8 and the logits split 4 + 3


# (name, input shares, output width over both towers, conv?) -- conv3-like and fc-like layers,
# equal and unequal shares: an odd fc width (9 -> 5 + 4) feeding 7 classes (4 + 3).
CASES = [
    ("conv3-like", [6, 6], 10, True),
    ("conv3-like, unequal shares", [5, 3], 9, True),
    ("fc6-like", [12, 12], 8, False),
    ("fc8-like, odd width, 7 classes", [5, 4], 7, False),
]


def _layer(conv: bool, fan_in: int, out: int) -> nn.Module:
    return nn.Conv2d(fan_in, out, 3, padding=1) if conv else nn.Linear(fan_in, out)


def _crossing_both_ways(rank: int) -> dict:
    """Per case: the overlapped layer against the simple path and the one-process layer."""
    diffs, default = {}, collectives.REDUCE_SCATTER_BACKENDS
    for backends in ({"gloo"}, set()):  # with equal shares gloo can run NCCL's reduce-scatter path too
        collectives.REDUCE_SCATTER_BACKENDS = backends
        for name, sizes, width, conv in CASES:
            if backends and len(set(sizes)) > 1:
                continue
            name = f"{name} ({'reduce-scatter' if backends else 'all-reduce'})"
            outs = split_sizes(width, 2)
            g = torch.Generator().manual_seed(len(name))  # the same draws on both ranks
            shape = (lambda n: (3, n, 5, 5)) if conv else (lambda n: (3, n))
            xs = [torch.randn(shape(n), generator=g) for n in sizes]
            full = _layer(conv, sum(sizes), width)
            with torch.no_grad():
                for p in full.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            rs = [torch.randn(shape(n), generator=g) for n in outs]  # d loss / d output, per tower

            # The one-process layer: every tower's output units, and every tower's loss term.
            x_ref = torch.cat(xs, 1).requires_grad_()
            y_ref = full(x_ref)
            (y_ref * torch.cat(rs, 1)).sum().backward()
            lo, n = sum(outs[:rank]), outs[rank]
            ref = {"output": y_ref.detach().narrow(1, lo, n),
                   "input grad": x_ref.grad.narrow(1, sum(sizes[:rank]), sizes[rank]),
                   "weight grad": full.weight.grad.narrow(0, lo, n), "bias grad": full.bias.grad.narrow(0, lo, n)}

            got = {}
            for overlap in (True, False):
                tower = _layer(conv, sum(sizes), n)
                tower.load_state_dict({k: v.narrow(0, lo, n) for k, v in full.state_dict().items()})
                x = xs[rank].clone().requires_grad_()
                y = TowerExchange(overlap=overlap).crossing("conv3" if conv else "fc7", tower, x, sizes)
                (y * rs[rank]).sum().backward()
                got[overlap] = {"output": y.detach(), "input grad": x.grad, "weight grad": tower.weight.grad,
                                "bias grad": tower.bias.grad}
            for what in ref:
                diffs[f"{name}: {what}, overlapped vs simple"] = rel_diff(got[True][what], got[False][what])
                diffs[f"{name}: {what}, overlapped vs one process"] = rel_diff(got[True][what], ref[what])
                diffs[f"{name}: {what}, simple vs one process"] = rel_diff(got[False][what], ref[what])
    collectives.REDUCE_SCATTER_BACKENDS = default
    return diffs


def _crossing_under_bf16_autocast(rank: int) -> dict:
    """bf16 autocast (precision=bf16): the overlapped layer computes in bf16 like the module,
    its parameters' gradients stay fp32, and its numbers are the simple path's up to bf16 rounding."""
    out = {}
    for name, sizes, width, conv in CASES:
        g = torch.Generator().manual_seed(len(name))
        n = split_sizes(width, 2)[rank]
        layer = _layer(conv, sum(sizes), n)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        x0 = torch.randn((3, sizes[rank], 5, 5) if conv else (3, sizes[rank]), generator=g)
        got = {}
        for overlap in (True, False):
            layer.zero_grad()
            x = x0.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = TowerExchange(overlap=overlap).crossing("fc7", layer, x, sizes)
            y.float().square().sum().backward()
            got[overlap] = {"output": y.detach(), "input grad": x.grad, "weight grad": layer.weight.grad,
                            "bias grad": layer.bias.grad}
        out[name] = {"dtypes": {k: v.dtype for k, v in got[True].items()},
                     "diffs": {k: rel_diff(got[True][k], got[False][k]) for k in got[True]}}
    return out


def test_overlapped_crossing_layer_under_bf16_autocast(spawned):
    for result in spawned["bf16"]:
        for name, r in result.items():
            assert r["dtypes"] == {"output": torch.bfloat16, "input grad": torch.float32,
                                   "weight grad": torch.float32, "bias grad": torch.float32}, name
            for what, diff in r["diffs"].items():
                # bf16 keeps 8 bits: the overlapped sum rounds each tower's block (measured: 8e-3)
                assert diff < 0.02, (name, what, diff)


def test_overlapped_crossing_layer_equals_the_simple_path_and_the_one_process_layer(spawned):
    for rank, diffs in enumerate(spawned["both ways"]):
        assert len(diffs) == 3 * 4 * (len(CASES) + 2)
        for what, diff in sorted(diffs.items()):
            assert diff < TOL, f"rank {rank}: {what} differs by {diff:.3g}"


def _training_step(rank: int) -> dict:
    """One step of the 7-class net (fc8 and the logits split 4 + 3), overlapped and not, against
    the one-process net; what the tracer counted for each, and that untraced nothing is."""
    torch.manual_seed(0)
    full = build_model("full", num_classes=CLASSES, input_size=SIZE)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE, generator=g) * 50, torch.randint(0, CLASSES, (BATCH,), generator=g)
    torch.manual_seed(100)
    F.cross_entropy(full(x), y).backward()
    out = {}
    for overlap in (True, False):
        tower = parallelize(full, overlap=overlap)
        ref = shard_state_dict({n: p.grad for n, p in full.named_parameters()}, tower)
        untraced = []
        torch.manual_seed(100)
        F.cross_entropy(tower(x), y).backward()  # training: no tracer, nothing recorded
        untraced.append(comm_trace.TRACE)
        tower.zero_grad()
        trace = comm_trace.start(timeline=True)  # as the benchmark does: host timestamps of each
        torch.manual_seed(100)  # the same dropout masks
        F.cross_entropy(tower(x), y).backward()
        assert comm_trace.stop() is trace and comm_trace.TRACE is None

        out[overlap] = {
            "untraced": untraced, "timeline": trace.timeline,
            "grads": {n: rel_diff(p.grad, ref[n]) for n, p in tower.named_parameters()},
            "fc8 rows": tower.fc8.weight.shape[0],
            "bytes": dict(trace.bytes), "calls": dict(trace.calls), "seconds": dict(trace.seconds),
            "waited": dict(trace.waited_seconds), "as_dict": trace.as_dict(),
            "total": trace.total_seconds(), "total waited": trace.total_waited_seconds(),
        }
    return out


@pytest.fixture(scope="module")
def spawned():
    """Every two-process part of this module, run in one pair of processes."""
    return run_ranks_together({"both ways": (_crossing_both_ways,), "bf16": (_crossing_under_bf16_autocast,),
                               "step": (_training_step,), "channels_last": (_channels_last_crossing,)})


@pytest.fixture(scope="module")
def steps(spawned):
    return spawned["step"]


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
def test_logits_gather_backward_with_unequal_class_shares(steps, overlap):
    # The loss is computed whole on both towers; each keeps its 4 or 3 classes' gradient.
    assert [r[overlap]["fc8 rows"] for r in steps] == [4, 3]
    for rank, result in enumerate(steps):
        for name in ("fc8.weight", "fc8.bias"):
            assert result[overlap]["grads"][name] < TOL, (rank, name)
        assert max(result[overlap]["grads"].values()) < TOL, (rank, result[overlap]["grads"])


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
def test_timeline_records_each_collective_and_training_records_nothing(steps, overlap):
    for result in steps:
        assert result[overlap]["untraced"] == [None]
        timeline = result[overlap]["timeline"]
        keys = [(layer, d) for layer in CROSSING for d in ("forward", "backward")] + [("logits", "forward")]
        assert sorted((e[0], e[1]) for e in timeline) == sorted(keys)
        for layer, direction, start, launched, begin, end in timeline:
            assert start <= launched <= begin <= end, (layer, direction)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
def test_waited_and_total_seconds_recorded_for_every_crossing_layer_and_direction(steps, overlap):
    for result in steps:
        r = result[overlap]
        keys = [(layer, d) for layer in CROSSING for d in ("forward", "backward")] + [("logits", "forward")]
        assert sorted(r["seconds"]) == sorted(r["waited"]) == sorted(keys)
        for key in keys:
            assert r["seconds"][key] > 0, key
            assert 0 <= r["waited"][key] <= r["seconds"][key], (key, r["waited"][key], r["seconds"][key])
            entry = r["as_dict"][".".join(key)]
            assert entry["seconds"] == r["seconds"][key] and entry["waited_seconds"] == r["waited"][key]
        assert 0 < r["total waited"] <= r["total"]
    # That blocking collectives are counted as waited whole is a wall-clock figure, which a busy
    # machine moves: benchmarks/comm_wait/bench_comm_wait.py measures it and says whether it is met.


def test_bytes_are_counted_per_layer_as_before(steps):
    """Overlapped or not, each crossing layer sends its input units forward (the smaller share
    padded to the larger) and, on gloo, all-reduces the whole input gradient backward."""
    full = build_model("full", num_classes=CLASSES, input_size=SIZE)
    side = feature_map_sizes(SIZE, "224")
    area = {"conv3": side["conv2"] ** 2, "fc6": side["conv5"] ** 2, "fc7": 1, "fc8": 1}
    expected = {}
    previous = {layer.name: prev for prev, layer in zip(full.spec.layers, full.spec.layers[1:])}
    for name in CROSSING:
        width = previous[name].width
        expected[(name, "forward")] = BATCH * max(split_sizes(width, 2)) * area[name] * 4
        expected[(name, "backward")] = 2 * BATCH * width * area[name] * 4 // 2
    expected[("logits", "forward")] = BATCH * max(split_sizes(CLASSES, 2)) * 4
    for result in steps:
        for overlap in (True, False):
            assert result[overlap]["bytes"] == expected, overlap
            assert result[overlap]["calls"] == {key: 1 for key in expected}, overlap


def test_comm_stats_keep_waited_seconds_apart():
    stats = CommTrace()
    stats.add("fc6", "forward", 100, 0.5, waited=0.1)
    stats.add("fc6", "forward", 100, 0.25)  # blocking: all of it waited
    stats.add("fc7", "backward", 10, 0.2, waited=0.3)  # woke up late: never more than the total
    assert stats.bytes[("fc6", "forward")] == 200 and stats.calls[("fc6", "forward")] == 2
    assert stats.seconds[("fc6", "forward")] == pytest.approx(0.75)
    assert stats.waited_seconds[("fc6", "forward")] == pytest.approx(0.35)
    assert stats.seconds[("fc7", "backward")] == pytest.approx(0.3) == stats.waited_seconds[("fc7", "backward")]
    assert stats.total_seconds() == pytest.approx(1.05) and stats.total_waited_seconds() == pytest.approx(0.65)
    assert stats.as_dict()["fc6.forward"] == {"bytes": 200, "seconds": pytest.approx(0.75),
                                              "waited_seconds": pytest.approx(0.35), "calls": 2}
    stats.reset()
    assert stats.total_seconds() == stats.total_waited_seconds() == 0 and not stats.as_dict()


def test_profile_switch():
    assert comm_trace.TRACE is None  # training: no tracer, no host synchronisation in the step
    try:
        comm.set_profile(True)
        assert comm_trace.TRACE is not None and comm_trace.TRACE.sync
    finally:
        comm.set_profile(False)
    assert comm_trace.TRACE is None


def test_one_process_exchange_is_the_module_itself():
    torch.manual_seed(0)
    for module, x in ((nn.Conv2d(4, 3, 3, padding=1), torch.randn(2, 4, 5, 5)), (nn.Linear(6, 5), torch.randn(2, 6))):
        assert torch.equal(build_model("full", num_classes=CLASSES, input_size=SIZE).exchange.crossing(
            "fc7", module, x, [x.shape[1]]), module(x))


def test_stack_shares_puts_each_slice_in_its_slot_in_the_gradients_layout():
    grad = torch.randn(2, 9, 3, 3)
    for g in (grad, grad.to(memory_format=torch.channels_last)):
        stack = collectives.stack_shares(g, 1, [5, 4])
        assert stack.is_contiguous() and stack.shape[0] == 2
        slots = [s.permute(0, 3, 1, 2) if collectives.is_channels_last(g) else s for s in stack.unbind(0)]
        assert torch.equal(slots[0], g[:, :5]) and torch.equal(slots[1][:, :4], g[:, 5:])
        assert not slots[1][:, 4:].any()  # the smaller share's padding is zero


def _channels_last_crossing(rank: int) -> dict:
    """conv3-like crossing layer on NHWC shares: the numbers of NCHW shares, NHWC gradients."""
    g = torch.Generator().manual_seed(3)
    layer = nn.Conv2d(12, 4, 3, padding=1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x0 = [torch.randn(2, 6, 5, 5, generator=g) for _ in range(2)][rank]
    out = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        for overlap in (True, False):
            layer.zero_grad()
            x = x0.clone(memory_format=fmt).requires_grad_()
            y = TowerExchange(overlap=overlap).crossing("conv3", layer.to(memory_format=fmt), x, [6, 6])
            y.square().sum().backward()
            out[(fmt is torch.channels_last, overlap)] = (y.detach(), x.grad, layer.weight.grad.clone())
    return out


def test_channels_last_shares_travel_as_they_are_stored(spawned):
    for result in spawned["channels_last"]:
        ref = result[(False, False)]
        for key, got in result.items():
            for a, b in zip(got, ref):
                assert rel_diff(a, b) < TOL, key
            assert got[1].is_contiguous(memory_format=torch.channels_last) or not key[0], key
