"""The opt-in tracer of the collectives of a training step: bytes, seconds and waits per layer and direction.

Off in training: a collective then records nothing (:func:`alexnet_mp.parallel.collectives.launch`
returns the backend's work untouched). The benchmark and ``profile=true`` switch it on with
:func:`start`; :func:`stop` switches it off and returns what it counted.

On the CPU each collective is timed on the host from its launch to its completion (the
work's future), and *waited* is the launch plus the wait: the host time the tower spent on
it. On a GPU, with ``sync`` (``profile=true``) the device is synchronised around each
collective, which times it alone and serialises the overlapped ones; without, CUDA events on
the compute stream at the launch, at the wait and after it give the span from the launch to
the compute stream's release (an upper bound of the collective's time where the tower
computed meanwhile) and the part the stream waited, read only when the counts are read.

**Bytes.** Each collective is counted per process from the tensor it is handed (``handed``,
keyed by layer, direction, the collective and the number of members ``K``):

- all-gather: the input tensor, this process's share (the output is K shares);
- reduce-scatter: the input tensor, the whole stack of K shares (the output is one share);
- all-reduce: the tensor (DDP's gradient buckets included, through :func:`count_ddp`);
- broadcast, reduce: the tensor (on the root and on every other member alike).

What a ring algorithm puts on the wire per process follows (:func:`wire_bytes`): an all-gather
sends (K-1) shares, (K-1)/K of its output; a reduce-scatter (K-1)/K of its input; an all-reduce,
a reduce-scatter followed by an all-gather, 2 (K-1)/K of its tensor; a broadcast or a reduce,
pipelined along a chain (K-1 hops of the tensor shared by K processes), (K-1)/K of it on
average. ``bytes`` holds those wire bytes per (layer, direction), counted at the launch (a
collective never waited for is counted too); its seconds are counted at the wait.
docs/schemes.md sets both against the architecture's arithmetic
(:mod:`alexnet_mp.parallel.bytes_model`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["ALL_GATHER", "ALL_REDUCE", "BROADCAST", "REDUCE", "REDUCE_SCATTER", "CommTrace", "TRACE", "Traced",
           "count_ddp", "start", "stop", "wire_bytes"]

ALL_GATHER, REDUCE_SCATTER, ALL_REDUCE = "all_gather", "reduce_scatter", "all_reduce"
BROADCAST, REDUCE = "broadcast", "reduce"


def wire_bytes(op: str, handed: int, members: int) -> int:
    """Bytes one process sends in a ring ``op`` over ``members`` processes, from the bytes it was handed
    (the module's convention): all-gather (K-1) x its share; reduce-scatter (K-1)/K x its input;
    all-reduce 2 (K-1)/K x its tensor; broadcast and reduce (a pipelined chain: K-1 hops of the
    tensor shared by K processes) (K-1)/K x the tensor. Nothing for a group of one."""
    if members < 2:
        return 0
    if op == ALL_GATHER:
        return handed * (members - 1)
    if op in (REDUCE_SCATTER, BROADCAST, REDUCE):
        return handed * (members - 1) // members
    if op == ALL_REDUCE:
        return 2 * handed * (members - 1) // members
    raise ValueError(f"unknown collective {op!r}")


@dataclass
class CommTrace:
    """Bytes this process sent and seconds it spent in collectives, per (layer, direction).

    ``seconds``: each collective from its launch to its completion; ``waited_seconds``: the
    part the tower waited for (never more than ``seconds``). ``timeline``, when a list, gets
    (layer, direction, launch start, launch end, wait start, wait end) of each host-timed
    collective, in ``time.perf_counter`` seconds (CLOCK_MONOTONIC on Linux: comparable between
    the processes of one machine). ``handed``: bytes handed to the collectives, per (layer, direction,
    collective, members); ``bytes``: what a ring sends of them (:func:`wire_bytes`)."""

    sync: bool = False
    bytes: dict = field(default_factory=lambda: defaultdict(int))
    handed: dict = field(default_factory=lambda: defaultdict(int))
    seconds: dict = field(default_factory=lambda: defaultdict(float))
    waited_seconds: dict = field(default_factory=lambda: defaultdict(float))
    calls: dict = field(default_factory=lambda: defaultdict(int))
    timeline: list | None = None
    _events: list = field(default_factory=list, repr=False)
    _ddp: dict = field(default_factory=dict, repr=False)  # this step's buckets: last launch, latest completion

    def add(self, layer: str, direction: str, nbytes: int, seconds: float, waited: float | None = None) -> None:
        """One collective; ``waited`` defaults to ``seconds`` (the tower waited for all of it)."""
        key = (layer, direction)
        self.bytes[key] += nbytes
        self.calls[key] += 1
        self._time(key, seconds, waited)

    def _time(self, key: tuple[str, str], seconds: float, waited: float | None = None) -> None:
        waited = max(seconds if waited is None else waited, 0.0)
        self.seconds[key] += max(seconds, waited)  # woke up after it ended: counted as waited
        self.waited_seconds[key] += waited

    def _resolve(self) -> None:
        for layer, direction, nbytes, (launch, wait, done) in self._events:
            done.synchronize()
            self._time((layer, direction), launch.elapsed_time(done) / 1e3, wait.elapsed_time(done) / 1e3)
        self._events.clear()

    def hand(self, layer: str, direction: str, op: str, handed: int, members: int) -> int:
        """Count a collective ``op`` over ``members`` handed ``handed`` bytes, at its launch (its time is
        counted when it is waited for); returns its wire bytes."""
        self.handed[(layer, direction, op, members)] += handed
        wire = wire_bytes(op, handed, members)
        self.bytes[(layer, direction)] += wire
        self.calls[(layer, direction)] += 1
        return wire

    def reset(self) -> None:
        for counts in (self.bytes, self.handed, self.seconds, self.waited_seconds, self.calls):
            counts.clear()
        self._events.clear()
        self._ddp.clear()
        if self.timeline is not None:
            self.timeline.clear()

    def total_bytes(self) -> int:
        self._resolve()
        return sum(self.bytes.values())

    def total_handed(self) -> int:
        return sum(self.handed.values())

    def handed_by_op(self) -> dict[str, int]:
        """Bytes handed per collective (``all_gather``, ``reduce_scatter``, ``all_reduce``)."""
        out: dict[str, int] = defaultdict(int)
        for (_, _, op, _), n in self.handed.items():
            out[op] += n
        return dict(out)

    def total_seconds(self) -> float:
        self._resolve()
        return sum(self.seconds.values())

    def total_waited_seconds(self) -> float:
        self._resolve()
        return sum(self.waited_seconds.values())

    def as_dict(self) -> dict[str, dict[str, float]]:
        self._resolve()
        return {f"{layer}.{direction}": {"bytes": self.bytes[(layer, direction)],
                                         "seconds": self.seconds[(layer, direction)],
                                         "waited_seconds": self.waited_seconds[(layer, direction)],
                                         "calls": self.calls[(layer, direction)]}
                for layer, direction in sorted(self.bytes)}

    def launch(self, start: Callable, device: torch.device, layer: str, direction: str, op: str, handed: int,
               members: int) -> "Traced":
        return Traced(self, start, device, layer, direction, self.hand(layer, direction, op, handed, members))


def _event() -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


class Traced:
    """A collective launched under the tracer; :meth:`wait` as the backend's work's, counted."""

    def __init__(self, trace: CommTrace, start: Callable, device: torch.device, layer: str, direction: str,
                 nbytes: int):
        self.trace, self.key, self.nbytes, self.cuda = trace, (layer, direction), nbytes, device.type == "cuda"
        self.done_at: float | None = None
        if self.cuda and trace.sync:
            torch.cuda.synchronize(device)
        self.launch_event = _event() if self.cuda and not trace.sync else None
        self.start = time.perf_counter()
        self.work = start()
        self.launched = time.perf_counter()
        if not self.cuda:
            try:
                self.work.get_future().add_done_callback(self._finished)
            except (RuntimeError, AttributeError):  # no future: completion is the end of the wait
                pass

    def _finished(self, _future) -> None:
        self.done_at = time.perf_counter()

    def wait(self) -> None:
        if self.launch_event is not None:  # CUDA events, read when the counts are read
            waited = _event()
            self.work.wait()
            self.trace._events.append((*self.key, self.nbytes, (self.launch_event, waited, _event())))
            return
        begin = time.perf_counter()
        self.work.wait()
        if self.cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        done = end if self.done_at is None or self.cuda else min(self.done_at, end)
        self.trace._time(self.key, done - self.start, (self.launched - self.start) + (end - begin))
        if self.trace.timeline is not None:
            self.trace.timeline.append((*self.key, self.start, self.launched, begin, end))
        self.work = None  # the future's callback holds this object


TRACE: CommTrace | None = None


def _ddp_bucket_hook(group, bucket):
    """DDP's own all-reduce of a gradient bucket (``allreduce_hook``: divided by K, summed), counted
    when the tracer is on. A bucket is waited for only after backward has launched the last one:
    its waited part is the span from that launch to its completion, past what earlier buckets
    already waited (together: from the last launch to the last completion)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    trace = TRACE
    if trace is None:
        return allreduce_hook(group, bucket)
    buffer = bucket.buffer()
    members = (group or torch.distributed.group.WORLD).size()
    trace.hand("ddp", "backward", ALL_REDUCE, buffer.numel() * buffer.element_size(), members)
    last = bucket.is_last()
    if bucket.index() == 0:  # DDP launches its buckets in index order: a new step
        trace._ddp.clear()
    begin = time.perf_counter()
    future = allreduce_hook(group, bucket)
    if last:
        trace._ddp["last_launch"] = time.perf_counter()

    def done(_future) -> None:
        end = time.perf_counter()
        since = max(trace._ddp.get("last_launch", end), trace._ddp.get("latest_done", 0.0))
        trace._ddp["latest_done"] = max(end, trace._ddp.get("latest_done", 0.0))
        trace._time(("ddp", "backward"), end - begin, max(end - since, 0.0))

    future.add_done_callback(done)
    return future


def count_ddp(ddp: torch.nn.parallel.DistributedDataParallel, group=None) -> None:
    """Let the tracer count ``ddp``'s gradient all-reduces (its buckets), as it counts the moves of
    :mod:`alexnet_mp.parallel.comm`. Call once, before the first step; untraced steps then run
    torch's own ``allreduce_hook`` (the same numbers as DDP without a hook)."""
    ddp.register_comm_hook(group, _ddp_bucket_hook)


def start(*, sync: bool = False, timeline: bool = False) -> CommTrace:
    """Trace every collective from now on (a fresh count); ``sync``: time each alone on a GPU."""
    global TRACE
    TRACE = CommTrace(sync=sync, timeline=[] if timeline else None)
    return TRACE


def stop() -> CommTrace | None:
    """Stop tracing; the counts so far (None if nothing was traced)."""
    global TRACE
    trace, TRACE = TRACE, None
    return trace
