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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alexnet_mp.job.launcher import Launcher

__all__ = ["UserError", "QuietStop", "first_error_of_job", "another_rank_reported"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class QuietStop(Exception):
    """This rank stops because another rank failed and has already printed the job's one line."""


def _shared_notes() -> bool:
    """Whether other ranks of this job may report too (torchrun with more than one process)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ


def first_error_of_job(launcher: Launcher) -> bool:
    """True in the first process of the job to report an error, False in any later one: the
    first leaves a note (:meth:`alexnet_mp.job.launcher.Launcher.first_note`) before it exits, so a
    rank whose peer failed finds it and stays quiet instead of printing a second line onto the terminal."""
    return not _shared_notes() or launcher.first_note("error")


def another_rank_reported(launcher: Launcher) -> bool:
    return _shared_notes() and launcher.has_note("error")
