"""Errors that reach the user as one line and an exit code.

`UserError` is bad input or usage (exit 2): the message names what is wrong and what to do.
`VerificationError` is a pass that broke numerics (exit 1): it names the pass and the error.
`ArtifactError` is an artifact that --require-artifact asked for and that failed (exit 1).
Anything else is a bug in graphopt and surfaces as a traceback with `--debug`.
"""

from __future__ import annotations


class GraphoptError(Exception):
    """Base class for errors that are reported to the user as one line."""

    exit_code = 1


class UserError(GraphoptError):
    """Bad input, option or usage: the user can fix it."""

    exit_code = 2


class VerificationError(GraphoptError):
    """A pass changed outputs beyond what it is allowed to."""

    exit_code = 1


class ArtifactError(GraphoptError):
    """--require-artifact: the target's artifact could not be built or failed its check."""

    exit_code = 1
