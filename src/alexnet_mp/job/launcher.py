"""The job this process belongs to: the launcher that supervises it, and the notes its
processes on this machine share.

The launcher. torchrun starts each worker in a session of its own, so a worker outlives a
launcher killed alone (kill -9, the OOM killer) and would train on unsupervised, holding the
run lock. The launcher's pid is read at the worker's start, while its parent is torchrun
(:meth:`Launcher.of_this_process`, when the command's :class:`alexnet_mp.job.cli.Job` is made),
and the :class:`Launcher` value is passed to what needs it; a worker whose launcher died has been
given another parent (init or a subreaper), so :meth:`Launcher.gone` is one ``getppid()``, cheap
enough for every step boundary (:mod:`alexnet_mp.job.preempt` asks it). ``prctl(PR_SET_PDEATHSIG)`` is not
used: it fires when the parent *thread* that forked the worker ends, not the launcher.

The notes. Every process of the job on this machine (torchrun's ranks, a process's loader
workers) shares one folder in the temporary directory, ``alexnet_mp-job-pidOWNER-...``, OWNER
being the launcher's pid (or the lone process's): a file created there with ``O_EXCL``
(:meth:`Launcher.first_note`) is something said once per job, the first error or one unreadable
image. Each process that leaves (:meth:`Launcher.leave`) marks the folder; the last of the job's
processes on this machine removes it, and folders whose OWNER is no longer alive (a job
killed outright) are removed by the next job (:meth:`Launcher.remove_stale_notes`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Launcher", "alive"]

PREFIX = "alexnet_mp-job-"


@dataclass(frozen=True)
class Launcher:
    """The launcher of this process and the job's notes folder, read once at the worker's start
    (:meth:`of_this_process`, which :class:`alexnet_mp.job.cli.Job` calls before anything else)
    and passed to what needs it. A plain value: the loader's workers get it with their dataset,
    forked or pickled, and so name the same launcher and folder as their rank.

    ``pid``: torchrun's pid, None without torchrun. ``owner``: the pid the notes folder is
    named after, the launcher's or (alone) this process's. ``key``: the rest of the folder's
    name, the torchrun run id and restart count (a restarted attempt's ranks must not read the
    last one's notes), or a token of this process."""

    pid: int | None
    owner: int
    key: str

    @classmethod
    def of_this_process(cls) -> "Launcher":
        """Read while this process's parent is still its launcher: at the worker's start."""
        if "TORCHELASTIC_RUN_ID" in os.environ:
            launcher = os.getppid()
            key = "-".join((os.environ["TORCHELASTIC_RUN_ID"], os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
            return cls(launcher, launcher, key)
        return cls(None, os.getpid(), uuid.uuid4().hex[:8])

    def gone(self) -> bool:
        """Whether the torchrun that started this process has died (this process is orphaned)."""
        return self.pid is not None and os.getppid() != self.pid

    def name(self) -> str:
        return f"the launcher (torchrun, pid {self.pid})"

    def note_dir(self) -> Path:
        """The folder this job's processes on this machine share (not created here)."""
        return Path(tempfile.gettempdir()) / f"{PREFIX}pid{self.owner}-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.key)}"

    def first_note(self, name: str) -> bool:
        """True in the first process of the job to note ``name``, False in every later one.
        Where no shared note can be made, True: better said twice than never."""
        folder = self.note_dir()
        safe = name if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) else hashlib.sha1(name.encode()).hexdigest()
        try:
            folder.mkdir(exist_ok=True)
            os.close(os.open(folder / safe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        except OSError:
            return True
        return True

    def has_note(self, name: str) -> bool:
        return (self.note_dir() / name).exists()

    def leave(self) -> None:
        """This process is done with the notes: the last of the job's processes on this machine
        to leave removes the folder (when there is one)."""
        folder = self.note_dir()
        if not folder.is_dir():
            return
        local = int(os.environ.get("LOCAL_RANK", "0"))
        try:
            (folder / f"left-{local}").touch()
            left = len(list(folder.glob("left-*")))
        except OSError:
            return
        if left >= int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
            shutil.rmtree(folder, ignore_errors=True)

    def remove_stale_notes(self) -> None:
        """Remove the note folders of other jobs whose owner (launcher or lone process) is gone."""
        try:
            folders = list(Path(tempfile.gettempdir()).glob(f"{PREFIX}*"))
        except OSError:
            return
        for folder in folders:
            name = folder.name[len(PREFIX):]  # pidOWNER-KEY
            owner = name[3:].split("-", 1)[0] if name.startswith("pid") else ""
            if owner.isdigit() and int(owner) > 1 and int(owner) != self.owner and not alive(int(owner)):
                shutil.rmtree(folder, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: neither gone nor a zombie (ended, not yet reaped by
    its parent, which a killed launcher's workers can be for a while)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's process
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return not Path("/proc/self").is_dir()  # gone meanwhile, or no /proc to ask
    except (OSError, IndexError):
        return True

