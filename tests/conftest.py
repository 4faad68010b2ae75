"""Shared pytest fixtures: one local Ray per test session, fresh SQLite MLflow stores."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite database (creating one takes seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates it
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, mlflow_db_template: Path) -> str:
    """A tracking URI for a fresh (empty) SQLite store in the test's temporary folder."""
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
