"""What goes wrong on the command line: a message with what to do, and an exit code."""

from __future__ import annotations

import enum

__all__ = ["CliError", "Exit"]


class Exit(enum.IntEnum):
    OK = 0
    FINDINGS = 1
    """The command ran and found something to fix (``verify``)."""
    USAGE = 2
    UNREACHABLE = 3
    """No broker answers at the URL."""
    ACCESS = 4
    """Bad credentials, or the user may not do this."""
    NO_MANAGEMENT = 5
    """The management API is off and the command needs it."""
    UNKNOWN = 6
    """No such queue (or schedule class)."""
    INTERRUPTED = 7


class CliError(Exception):
    """What happened and what to do, one sentence each; ends the command with
    ``code``."""

    def __init__(self, what: str, todo: str, code: Exit) -> None:
        super().__init__(f"{what}. {todo}")
        self.what = what
        self.todo = todo
        self.code = code
