"""The errors a command reports in one line, without a traceback.

Anything else that escapes a command is a fault in this program and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """What the user gave (arguments, configuration, data files) cannot be used."""


class RunFailure(RuntimeError):
    """The run cannot go on for a reason outside this program: a peer went away or misbehaved,
    the two sides of a codec disagree, or training diverged."""
