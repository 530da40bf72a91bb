"""Preemption: a scheduler's signal stops every rank at the same step and saves that position.

SIGTERM (a time limit, a preemption, torchrun forwarding either), SIGINT (Ctrl-C) and SIGUSR1
(``#SBATCH --signal=B:USR1@120``) only set a flag: a handler that did more could run in the
middle of a collective or a checkpoint write. At each step boundary (and between validation
batches) every rank asks, with one tiny all-reduce, whether any rank holds the flag, so all
stop at the same step; the run then saves a checkpoint of exactly that position and every
process exits with :data:`EXIT_PREEMPTED`. A second signal (the scheduler signals every
process *and* torchrun forwards it) finds the flag already set.

The same flag stops a run whose launcher died (:meth:`alexnet_mp.job.launcher.Launcher.gone`, asked
before each agreement: no collective of its own). The agreement carries the cause, so every
rank saves the same step and rank 0 names the launcher even when another rank noticed first.

Loader workers ignore the stop signals (:mod:`alexnet_mp.data.loader`), but a worker can
still die (kill -9, the OOM killer, a signal in the instant before it set that up), and
torch's SIGCHLD handler then raises in the main process wherever it is. So that never cuts
a checkpoint write, :func:`worker_deaths_held` holds it back during a save; once a stop is
pending it is held for good (a worker dying of the same signal is part of the stop), and a
batch that cannot be fetched then is the stop itself in a one-process run
(:meth:`PreemptionFlag.stop_instead`).

    flag = PreemptionFlag.install(job.launcher)
    ...
    flag.check()              # collective; raises StopRequested on every rank together
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from alexnet_mp.job.launcher import Launcher

__all__ = ["EXIT_PREEMPTED", "STOP_SIGNALS", "PreemptionFlag", "Preempted", "StopRequested", "save_on_stop",
           "say_preempted", "worker_deaths_held"]

# sysexits' EX_TEMPFAIL ("try again later"): distinct from 1 (an error) and from 128+N (killed
# by a signal), so a job script can requeue on it.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# The causes the ranks agree on (the largest wins): none, a stop signal, the launcher gone.
_NONE, _SIGNAL, _LAUNCHER_GONE = 0, 1, 2


class StopRequested(Exception):
    """Every rank agreed to stop at this step boundary."""


class Preempted(Exception):
    """The run stopped on a signal and saved its position; printed once, exit :data:`EXIT_PREEMPTED`."""

    def __init__(self, cause: str, step: int, saved: Path | None):
        """``cause``: "stopped by SIGTERM", "the launcher (...) is gone; stopped", ..."""
        self.cause, self.step, self.saved = cause, step, saved
        where = f"saved {saved}" if saved is not None else "nothing to save yet"
        super().__init__(f"{cause} at step {step}; {where}; continue with resume=true (or resume=auto)")


class PreemptionFlag:
    """The stop signals' flag in this process, and the collective that agrees on it.
    ``launcher``: this process's (:class:`Launcher`), asked whether it is gone."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.received: int | None = None
        self.agreed = _NONE  # the cause every rank agreed on
        self._previous: dict[int, object] = {}
        self._group = None

    @classmethod
    def install(cls, launcher: Launcher) -> "PreemptionFlag":
        """Catch the stop signals (collective under NCCL: it makes a small gloo group for the flag)."""
        flag = cls(launcher)
        if dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() != "gloo":
            # On the CPU: asking every step must not make the host wait for the GPU.
            flag._group = dist.new_group(backend="gloo")
        for sig in STOP_SIGNALS:
            flag._previous[sig] = signal.signal(sig, flag._note)
        return flag

    def _note(self, signum: int, frame) -> None:  # noqa: ARG002
        if self.received is None:  # the first signal names the stop; a forwarded copy changes nothing
            self.received = signum
            # The job's loader workers may die of the same signal (see the module's docstring).
            self._previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @classmethod
    @contextmanager
    def installed(cls, launcher: Launcher) -> Iterator["PreemptionFlag"]:
        """The flag for the ``with`` block (:meth:`install`); the signals' previous handlers come
        back when the block ends normally. On an error they do not: the flag stays, so that a
        SIGTERM from torchrun (stopping the other ranks) cannot cut the error's one line short."""
        flag = cls.install(launcher)
        yield flag
        flag.restore()

    def stop_instead(self, err: BaseException) -> None:
        """Raise :class:`StopRequested` when ``err`` (fetching a batch, between steps) says a
        loader worker died while a stop is pending, in a run of one process. With several
        ranks the others are already inside the next step: ``err`` stands (one line)."""
        from alexnet_mp.data.loader import worker_death

        if self.received is None or worker_death(err) is None:
            return
        if dist.is_initialized() and dist.get_world_size() > 1:
            return
        self.agreed = _SIGNAL
        raise StopRequested() from None

    @property
    def cause(self) -> str:
        """What stopped the run, as the stop line begins."""
        if self.agreed == _LAUNCHER_GONE:
            return (f"{self.launcher.name()} is gone; stopped" if self.launcher.gone()
                    else "the launcher (torchrun) of another rank is gone; stopped")
        if self.received is not None:
            return f"stopped by {signal.Signals(self.received).name}"
        return "stopped by a signal to another rank"

    def requested(self) -> bool:
        """Collective: True on every rank when any rank has received a stop signal or lost its launcher."""
        mine = _LAUNCHER_GONE if self.launcher.gone() else _SIGNAL if self.received is not None else _NONE
        if dist.is_initialized() and dist.get_world_size(self._group) > 1:
            # The flag's group is gloo (install): a CPU tensor, no wait for a GPU.
            t = torch.tensor([mine], dtype=torch.int32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
            mine = int(t.item())
        self.agreed = mine
        return mine != _NONE

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
        raise Preempted(flag.cause, step(), saved) from None


@contextmanager
def worker_deaths_held() -> Iterator[None]:
    """Hold back SIGCHLD's handler (torch's, which raises when a loader worker died) inside;
    run it after, when a child ended meanwhile. For a checkpoint write: it finishes first."""
    held: list = []
    try:
        previous = signal.signal(signal.SIGCHLD, lambda signum, frame: held.append((signum, frame)))
    except ValueError:  # not the main thread: no Python signal handler runs here anyway
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)
        if held and callable(previous):
            previous(*held[0])


def say_preempted(message: str, main: bool) -> None:
    """Print the stop once per job (the main process); the caller leaves with :data:`EXIT_PREEMPTED`
    (:class:`alexnet_mp.job.cli.Job`)."""
    import sys

    if main:
        print(f"alexnet_mp: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
