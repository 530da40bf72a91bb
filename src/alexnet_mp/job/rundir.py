"""The run directory: one live job at a time, and writable before any training.

Rank 0 holds an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` for the job's life. The kernel
drops the lock when the process ends however it ends (kill -9 included), so a lock left by a
killed job never blocks a relaunch, while a second live launch into the same directory is
refused with one line. (flock is advisory and per machine; on NFS it is emulated with
POSIX locks by Linux, which also go with the process.)

A job that fails before writing anything into a run directory made for it (a configuration
rejected, ``resume=true`` with nothing to resume) removes it again (:func:`remove_if_unused`).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from alexnet_mp.parallel import ranks
from alexnet_mp.errors import UserError

__all__ = ["RunLock", "check_writable", "make_run_dir", "remove_if_unused"]


def _explain(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def make_run_dir(folder: Path, what: str = "the run directory", fix: str = "choose another hydra.run.dir") -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {what} {folder}: {_explain(err)}; {fix}") from None


def check_writable(folder: Path, what: str = "the run directory") -> None:
    """One line now, before any work, when files cannot be created in ``folder``."""
    probe = folder / f".alexnet_mp-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{what} {folder} has no space left; free some and re-run the same command") from None
        raise UserError(f"cannot write to {what} {folder}: {_explain(err)}") from None


def remove_if_unused(folder: Path, within: Path | None = None) -> None:
    """Remove ``folder`` when it holds nothing, or only a lock no live job holds; and then
    its parents inside ``within`` that are left empty (Hydra's ``outputs/DATE``)."""
    folder = Path(folder)
    _remove_unused(folder)
    if within is None or folder.exists():
        return
    within = Path(within).resolve()
    for parent in folder.resolve().parents:
        if parent == within or within not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:
            return  # not empty: another run's folder


def _remove_unused(folder: Path) -> None:
    try:
        if any(p.name != ".lock" for p in folder.iterdir()):
            return
        lock = folder / ".lock"
        if lock.exists():
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a live job holds it
                lock.unlink()
            finally:
                os.close(fd)
        folder.rmdir()
    except OSError:
        pass  # in use, not empty, or gone already (another rank removed it)


class RunLock:
    """The run directory's lock, taken by the main process and agreed on by every rank."""

    def __init__(self, run_dir: Path, main: bool):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        problem = self._take(run_dir) if main else None
        problem = ranks.broadcast_object(problem)
        if problem:
            raise UserError(problem)

    def _take(self, run_dir: Path) -> str | None:
        try:
            check_writable(run_dir)
        except UserError as err:
            return str(err)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return (f"{run_dir} is in use by a live job (pid {holder} on {os.uname().nodename} holds "
                        f"{self.path}); wait for it to end, or choose another hydra.run.dir")
            return f"cannot lock {self.path}: {_explain(err)}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            # Unlocked explicitly: loader workers forked since share the lock, and may outlive us.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
