"""Errors a user can act on.

Every problem with the user's input (data, configuration, checkpoint, process
count) is raised as a :class:`UserError` whose message is one line naming the
problem. The launchers print that line and exit with status 1; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "QuietStop"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class QuietStop(Exception):
    """This rank stops because another rank failed and has already printed the job's one line."""
