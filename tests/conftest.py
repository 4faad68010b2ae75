"""Shared pytest fixtures: one local Ray per test session, a fresh SQLite MLflow store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A small local Ray (2 CPUs, no dashboard), started once and shut down at the end."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    import ray

    if ray.is_initialized():  # started by someone else: use it, leave it running
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2,
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A tracking URI for a fresh SQLite store in the test's temporary folder."""
    return f"sqlite:///{tmp_path}/mlflow.db"
