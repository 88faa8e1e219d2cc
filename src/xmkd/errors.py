"""Error types of the pipeline.

Every error a user can trigger with bad input (params, data files, CLI flags) is an
:class:`XmkdError` whose message names the problem *and* the fix. Stage scripts catch
:class:`XmkdError` at the top level and print the message without a traceback.
"""

from __future__ import annotations


class XmkdError(Exception):
    """Base class: a user-facing error whose message names the problem and the fix."""


class ConfigError(XmkdError):
    """A parameter is missing, unknown (e.g. mistyped), or has an invalid value."""


class DataError(XmkdError):
    """An input file or directory is missing, unreadable, or has the wrong content."""


class DecodeError(DataError):
    """A video or audio file cannot be decoded, or lacks a required stream (e.g. no sound track)."""


class TrainingError(XmkdError):
    """Training diverged (NaN/inf loss) or cannot proceed."""
