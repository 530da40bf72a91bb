"""Errors a user can act on.

Every problem with the user's input (data, configuration, checkpoint, process
count) is raised as a :class:`UserError` whose message is one line naming the
problem. The launchers print that line and exit with status 1; anything else is
a bug and keeps its traceback.

The line is printed once per job: the first process of a torchrun job to report leaves a
note (:func:`first_error_of_job`), and a rank that finds it (:func:`another_rank_reported`)
stops quietly (:class:`QuietStop`).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["UserError", "QuietStop", "first_error_of_job", "another_rank_reported"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class QuietStop(Exception):
    """This rank stops because another rank failed and has already printed the job's one line."""


def _job_note_dir() -> Path | None:
    """A folder every process of this job (on this machine) shares and no other job does:
    torchrun's run id, its restart count and the agent's pid (the workers' parent)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    key = "-".join((os.environ["TORCHELASTIC_RUN_ID"], os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
                    str(os.getppid())))
    return Path(tempfile.gettempdir()) / f"alexnet_mp-job-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}"


def first_error_of_job() -> bool:
    """True in the first process of the job to report an error, False in any later one: the
    first leaves a note (created exclusively) before it exits, so a rank whose peer failed
    finds it and stays quiet instead of printing a second line onto the terminal."""
    folder = _job_note_dir()
    if folder is None:
        return True
    try:
        folder.mkdir(exist_ok=True)
        os.close(os.open(folder / "error", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:
        return True  # no shared note possible: better twice than never
    return True


def another_rank_reported() -> bool:
    folder = _job_note_dir()
    return folder is not None and (folder / "error").exists()
