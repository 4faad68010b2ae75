"""Every use of Ray's private API, in one place, behind a check of the installed Ray.

alrao_tune relies on three things Ray Tune does not expose publicly:

* :func:`replace_callbacks`: ``Tuner.restore`` takes no callbacks, so the restored
  Tuner's run config (``tuner._local_tuner._run_config``) gets this invocation's ones;
* :func:`result_trials`: the trial objects behind a ``ResultGrid``
  (``grid._experiment_analysis.trials``), for the Tune trial id of a trial that never
  reported;
* :func:`kept_checkpoints`: the checkpoints a trial's checkpoint manager still keeps
  (``trial.run_metadata.checkpoint_manager.best_checkpoint_results``), to put back
  folders a SIGKILL removed before a restore.

They were written against :data:`SUPPORTED_RAY`; any other Ray version fails at the first
use with :class:`RayVersionError`, naming the supported version, instead of misbehaving
later (a silently ignored callback loses MLflow values). Nothing else in alrao_tune
touches an underscore attribute of a Ray object (a test checks it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from alrao_tune.errors import AlraoTuneError

SUPPORTED_RAY = "2.60"  # major.minor: the private attributes below are those of Ray 2.60.x


class RayVersionError(AlraoTuneError, RuntimeError):
    """The installed Ray is not the version whose internals alrao_tune uses."""


def check_ray_version(installed: str | None = None) -> None:
    """Raises :class:`RayVersionError` unless Ray ``SUPPORTED_RAY``.x is installed
    (``installed``: a version string to check instead of ``ray.__version__``)."""
    if installed is None:
        import ray

        installed = ray.__version__
    if ".".join(installed.split(".")[:2]) != SUPPORTED_RAY:
        raise RayVersionError(
            f"alrao_tune needs Ray {SUPPORTED_RAY}.x (it uses Ray Tune internals of that "
            f"version), but Ray {installed} is installed; install the supported one with "
            f"pip install 'ray[tune]=={SUPPORTED_RAY}.0'")


@functools.cache
def _checked() -> bool:
    check_ray_version()
    return True


def replace_callbacks(tuner: Any, callbacks: Sequence[Any]) -> None:
    """Puts ``callbacks`` into a Tuner made by ``Tuner.restore`` (which takes none and
    would use the ones pickled by the interrupted process)."""
    _checked()
    tuner._local_tuner._run_config.callbacks = list(callbacks)


def result_trials(grid: Any) -> list[Any]:
    """The Tune trials of a ``ResultGrid``, in the order of its results."""
    _checked()
    return list(grid._experiment_analysis.trials)


def kept_checkpoints(trial: Any) -> list[Any]:
    """The checkpoints (``ray.tune.Checkpoint``) the trial's checkpoint manager keeps."""
    _checked()
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    results = getattr(manager, "best_checkpoint_results", None) or []
    return [r.checkpoint for r in results if r.checkpoint is not None]
