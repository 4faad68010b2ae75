"""The one base of every user-facing error: bad input or an unusable environment.

Each layer raises its own subclass (``ConfigError``, ``DatasetError``, ``ArchError``,
``SpaceError``, ``CheckpointError``, ``TrackingError``, ``ResumeError``, ``ClusterError``,
``UIError``, ``StoreError``); the message names what is wrong and the fix. The command line
prints ``alrao-tune: error: <message>`` for any :class:`AlraoTuneError` and exits with code
:data:`EXIT_USAGE`. The Alrao core (``alrao_tune.alrao``, torch only) raises plain
``ValueError`` subclasses; the training layer turns its ``UnsupportedLayerError`` into an
``ArchError``.
"""

from __future__ import annotations

EXIT_USAGE = 2  # what the CLI exits with for an AlraoTuneError


class AlraoTuneError(Exception):
    """Bad input or an unusable environment; ``str()`` says what and how to fix it."""
