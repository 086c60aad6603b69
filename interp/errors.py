"""The project's error type: a user mistake, reported as one line by the CLI (exit 2).

Messages say what was found, what was expected and what to do. Anything that is not an
`InterpError` is a bug and shows a traceback.
"""

from __future__ import annotations

__all__ = ["InterpError", "DataError", "AudioError"]


class InterpError(Exception):
    """Base class of every error that a user can cause and fix."""


class DataError(InterpError):
    """A spoken task set, a source file or a manifest record is missing or malformed."""


class AudioError(DataError):
    """An audio file is unreadable or has the wrong sample rate or channel count."""
