"""Ray start-up shared by the screening and compare jobs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# Quiet, lean defaults for a library driver (each can be overridden from the environment).
_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def set_ray_env() -> None:
    """Sets alrao_tune's Ray environment defaults unless the user already set them."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Connects to ``address`` (or ``RAY_ADDRESS``) or starts a local Ray, once.

    An already-initialised Ray (a test fixture, a notebook) is reused and left running;
    a Ray started here is shut down on exit.
    """
    set_ray_env()
    import optuna
    import ray

    # The driver prints alrao_tune's own progress; Tune's and Optuna's INFO/WARNING chatter
    # (e.g. result.json look-ups that the disabled per-trial loggers make moot) is hidden.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, object_store_memory=200 * 1024**2, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
