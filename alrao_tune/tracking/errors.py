"""The tracking layer's errors, in a module of their own: :mod:`~alrao_tune.tracking.runs`
and :mod:`~alrao_tune.tracking.retry` both raise them (and ``runs`` uses ``retry``)."""

from __future__ import annotations

from alrao_tune.errors import AlraoTuneError


class TrackingError(AlraoTuneError, RuntimeError):
    """The MLflow store cannot be used (unreachable server, failed run creation)."""


class ServerGoneError(TrackingError):
    """The tracking server did not answer within the retry budget."""
