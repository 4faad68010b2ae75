"""MLflow: the run tree (:mod:`.runs`, no Ray) and the driver-side Tune callback that logs
every trial (:mod:`.callback`, imports Ray: import it from there)."""

from __future__ import annotations

from alrao_tune.tracking.runs import (
    MLFLOW_ENV_DEFAULTS,
    RunTree,
    TrackingError,
    check_reachable,
    default_tracking_uri,
    flatten,
    mlflow_client,
    prepare_store,
    sanitize_metric_name,
    sqlite_path,
)

__all__ = [
    "MLFLOW_ENV_DEFAULTS",
    "RunTree",
    "TrackingError",
    "check_reachable",
    "default_tracking_uri",
    "flatten",
    "mlflow_client",
    "prepare_store",
    "sanitize_metric_name",
    "sqlite_path",
]
