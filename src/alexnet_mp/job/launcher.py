"""The job this process belongs to: the launcher that supervises it, and the notes its
processes on this machine share.

The launcher. torchrun starts each worker in a session of its own, so a worker outlives a
launcher killed alone (kill -9, the OOM killer) and would train on unsupervised, holding the
run lock. The launcher's pid is recorded when this module is imported, at the worker's
start, while its parent is torchrun; a worker whose launcher died has been given another
parent (init or a subreaper), so :func:`launcher_gone` is one ``getppid()``, cheap enough for
every step boundary (:mod:`alexnet_mp.job.preempt` asks it). ``prctl(PR_SET_PDEATHSIG)`` is not
used: it fires when the parent *thread* that forked the worker ends, not the launcher.

The notes. Every process of the job on this machine (torchrun's ranks, a process's loader
workers) shares one folder in the temporary directory, ``alexnet_mp-job-pidOWNER-...``, OWNER
being the launcher's pid (or the lone process's): a file created there with ``O_EXCL``
(:func:`first_note`) is something said once per job, the first error or one unreadable
image. Each process that leaves (:func:`leave`) marks the folder; the last of the job's
processes on this machine removes it, and folders whose OWNER is no longer alive (a job
killed outright) are removed by the next job (:func:`remove_stale_notes`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

__all__ = ["launcher_gone", "launcher_name", "note_dir", "first_note", "has_note", "leave",
           "remove_stale_notes", "alive"]

PREFIX = "alexnet_mp-job-"
_UNDER_TORCHRUN = "TORCHELASTIC_RUN_ID" in os.environ
_LAUNCHER = os.getppid() if _UNDER_TORCHRUN else None
# A process without torchrun owns its job; its forked loader workers inherit these values.
_OWNER = _LAUNCHER if _LAUNCHER is not None else os.getpid()
_TOKEN = uuid.uuid4().hex[:8]


def launcher_gone() -> bool:
    """Whether the torchrun that started this process has died (this process is orphaned)."""
    return _LAUNCHER is not None and os.getppid() != _LAUNCHER


def launcher_name() -> str:
    return f"the launcher (torchrun, pid {_LAUNCHER})"


def note_dir() -> Path:
    """The folder this job's processes on this machine share (not created here)."""
    if _UNDER_TORCHRUN:
        # The run id and restart count: a restarted attempt's ranks must not read the last one's notes.
        key = "-".join((os.environ["TORCHELASTIC_RUN_ID"], os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    else:
        key = _TOKEN
    return Path(tempfile.gettempdir()) / f"{PREFIX}pid{_OWNER}-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}"


def first_note(name: str) -> bool:
    """True in the first process of the job to note ``name``, False in every later one.
    Where no shared note can be made, True: better said twice than never."""
    folder = note_dir()
    safe = name if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) else hashlib.sha1(name.encode()).hexdigest()
    try:
        folder.mkdir(exist_ok=True)
        os.close(os.open(folder / safe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def has_note(name: str) -> bool:
    return (note_dir() / name).exists()


def leave() -> None:
    """This process is done with the notes: the last of the job's processes on this machine
    to leave removes the folder (when there is one)."""
    folder = note_dir()
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


def remove_stale_notes() -> None:
    """Remove the note folders of jobs whose owner (launcher or lone process) is gone."""
    try:
        folders = list(Path(tempfile.gettempdir()).glob(f"{PREFIX}*"))
    except OSError:
        return
    for folder in folders:
        name = folder.name[len(PREFIX):]  # pidOWNER-KEY
        owner = name[3:].split("-", 1)[0] if name.startswith("pid") else ""
        if owner.isdigit() and int(owner) > 1 and int(owner) != _OWNER and not alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
