"""The opt-in tracer of the towers' collectives: bytes, seconds and waits per layer and direction.

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
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["CommTrace", "TRACE", "Traced", "start", "stop"]


@dataclass
class CommTrace:
    """Bytes this process sent and seconds it spent in collectives, per (layer, direction).

    ``seconds``: each collective from its launch to its completion; ``waited_seconds``: the
    part the tower waited for (never more than ``seconds``). ``timeline``, when a list, gets
    (layer, direction, launch start, launch end, wait start, wait end) of each host-timed
    collective, in ``time.perf_counter`` seconds (CLOCK_MONOTONIC on Linux: comparable between
    the processes of one machine)."""

    sync: bool = False
    bytes: dict = field(default_factory=lambda: defaultdict(int))
    seconds: dict = field(default_factory=lambda: defaultdict(float))
    waited_seconds: dict = field(default_factory=lambda: defaultdict(float))
    calls: dict = field(default_factory=lambda: defaultdict(int))
    timeline: list | None = None
    _events: list = field(default_factory=list, repr=False)

    def add(self, layer: str, direction: str, nbytes: int, seconds: float, waited: float | None = None) -> None:
        """One collective; ``waited`` defaults to ``seconds`` (the tower waited for all of it)."""
        key = (layer, direction)
        self.bytes[key] += nbytes
        self.calls[key] += 1
        waited = max(seconds if waited is None else waited, 0.0)
        self.seconds[key] += max(seconds, waited)  # woke up after it ended: counted as waited
        self.waited_seconds[key] += waited

    def _resolve(self) -> None:
        for layer, direction, nbytes, (launch, wait, done) in self._events:
            done.synchronize()
            self.add(layer, direction, nbytes, launch.elapsed_time(done) / 1e3, wait.elapsed_time(done) / 1e3)
        self._events.clear()

    def reset(self) -> None:
        for counts in (self.bytes, self.seconds, self.waited_seconds, self.calls):
            counts.clear()
        self._events.clear()
        if self.timeline is not None:
            self.timeline.clear()

    def total_bytes(self) -> int:
        self._resolve()
        return sum(self.bytes.values())

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

    def launch(self, start: Callable, device: torch.device, layer: str, direction: str, nbytes: int) -> "Traced":
        return Traced(self, start, device, layer, direction, nbytes)


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
        self.trace.add(*self.key, self.nbytes, done - self.start, (self.launched - self.start) + (end - begin))
        if self.trace.timeline is not None:
            self.trace.timeline.append((*self.key, self.start, self.launched, begin, end))
        self.work = None  # the future's callback holds this object


TRACE: CommTrace | None = None


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
