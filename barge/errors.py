"""The one exception hierarchy of Barge.

Every failure is either *temporary* (retrying the same operation later may succeed: throttling,
a dropped connection, an API server restart) or *permanent* (retrying cannot help: a bad spec, a
missing Secret, a corrupted repository). Callers decide retry-vs-fail on that split alone, and the
gRPC layer maps the classes to status codes in one place, so the meaning never drifts between
components.
"""

from __future__ import annotations


class BargeError(Exception):
    """Base of every error Barge raises on purpose. ``str(err)`` is a message for a human."""


class TemporaryError(BargeError):
    """Retrying later may succeed."""


class PermanentError(BargeError):
    """Retrying cannot succeed until something outside Barge changes; the message says what."""


class Conflict(TemporaryError):
    """Someone changed the object since it was read (HTTP 409): re-read it and try again."""


class TooManyRequests(TemporaryError):
    """The server refused for now (HTTP 429): API throttling, or a PodDisruptionBudget holding an eviction."""


class Expired(TemporaryError):
    """A resourceVersion is too old for the API server (HTTP 410 Gone): list again, then watch."""


class InvalidInput(PermanentError):
    """A spec, flag or argument is wrong; the message names it and what would be right."""


class NotFound(PermanentError):
    """A referenced object (Secret, VolumeSnapshot, snapshot ID, ...) does not exist."""


class Unauthenticated(PermanentError):
    """The caller's credentials are invalid or expired: no identity could be established."""


class PermissionDenied(PermanentError):
    """The caller is known but not allowed to do this (wrong identity, node or binding)."""


class Fenced(PermanentError):
    """A write was refused because the writer no longer holds the assignment (or the CR is final)."""


class CorruptionDetected(PermanentError):
    """Stored data failed an integrity check; never silently ignored."""


class Canceled(BargeError):
    """The operation was canceled on request; neither a success nor a failure."""


def one_line(err: BaseException) -> str:
    """An unexpected error (a bug) for a status message or a terminal: its type and its message on
    one line; the traceback belongs in the log."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
