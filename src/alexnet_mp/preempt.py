"""Preemption: a scheduler's signal stops every rank at the same step and saves that position.

SIGTERM (a time limit, a preemption, torchrun forwarding either), SIGINT (Ctrl-C) and SIGUSR1
(``#SBATCH --signal=B:USR1@120``) only set a flag: a handler that did more could run in the
middle of a collective or a checkpoint write. At each step boundary (and between validation
batches) every rank asks, with one tiny all-reduce, whether any rank holds the flag, so all
stop at the same step; the run then saves a checkpoint of exactly that position and every
process exits with :data:`EXIT_PREEMPTED`. A second signal (the scheduler signals every
process *and* torchrun forwards it) finds the flag already set.

    flag = PreemptionFlag.install()
    ...
    flag.check()              # collective; raises StopRequested on every rank together
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from alexnet_mp import job

__all__ = ["EXIT_PREEMPTED", "STOP_SIGNALS", "PreemptionFlag", "Preempted", "StopRequested", "save_on_stop",
           "exit_preempted"]

# sysexits' EX_TEMPFAIL ("try again later"): distinct from 1 (an error) and from 128+N (killed
# by a signal), so a job script can requeue on it.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequested(Exception):
    """Every rank agreed to stop at this step boundary."""


class Preempted(Exception):
    """The run stopped on a signal and saved its position; printed once, exit :data:`EXIT_PREEMPTED`."""

    def __init__(self, signal_name: str, step: int, saved: Path | None):
        self.signal_name, self.step, self.saved = signal_name, step, saved
        where = f"saved {saved}" if saved is not None else "nothing to save yet"
        super().__init__(f"stopped by {signal_name} at step {step}; {where}; continue with resume=true "
                         f"(or resume=auto)")


class PreemptionFlag:
    """The stop signals' flag in this process, and the collective that agrees on it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._group = None

    @classmethod
    def install(cls) -> "PreemptionFlag":
        """Catch the stop signals (collective under NCCL: it makes a small gloo group for the flag)."""
        flag = cls()
        if dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() != "gloo":
            # On the CPU: asking every step must not make the host wait for the GPU.
            flag._group = dist.new_group(backend="gloo")
        for sig in STOP_SIGNALS:
            flag._previous[sig] = signal.signal(sig, flag._note)
        return flag

    def _note(self, signum: int, frame) -> None:  # noqa: ARG002
        if self.received is None:  # the first signal names the stop; a forwarded copy changes nothing
            self.received = signum

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal to another rank"

    def requested(self) -> bool:
        """Collective: True on every rank when any rank has received a stop signal."""
        return not job.all_ranks(self.received is None, group=self._group)

    def check(self) -> None:
        """Collective: raise :class:`StopRequested` on every rank together when a stop was asked for."""
        if self.requested():
            raise StopRequested()


@contextmanager
def save_on_stop(flag: PreemptionFlag, save: Callable[[], Path | None], step: Callable[[], int]) -> Iterator[None]:
    """Turn an agreed stop into a checkpoint of the position reached and :class:`Preempted`."""
    try:
        yield
    except StopRequested:
        saved = save()
        raise Preempted(flag.signal_name, step(), saved) from None


def exit_preempted(message: str, main: bool) -> None:
    """Print the stop once per job (the main process) and leave with :data:`EXIT_PREEMPTED`."""
    import sys

    if main:
        print(f"alexnet_mp: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PREEMPTED)
