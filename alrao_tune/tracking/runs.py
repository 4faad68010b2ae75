"""MLflow tracking: the run tree pipeline -> stage -> trial, written from the Tune driver.

:func:`prepare_store` creates the store and experiment before any trial runs;
:class:`RunTree` is a thin helper over ``MlflowClient`` for nested runs. The Tune callback
that gives every trial a child run of a stage run is in :mod:`alrao_tune.tracking.callback`
(it imports Ray; this module does not). The tag names are in :mod:`alrao_tune.schema`.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alrao_tune.schema import PARENT_TAG
from alrao_tune.tracking.errors import TrackingError
from alrao_tune.tracking.retry import RetryingClient

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# What the command line and the dashboard put into their environment (kept when set):
# no "View run" URL printed per created run, no progress bar per downloaded artifact.
MLFLOW_ENV_DEFAULTS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                       # MLflow's own HTTP retries back off for minutes; alrao_tune's
                       # (tracking.retry) reconnect to a restarted server within 5 s
                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
MAX_PARAM_LEN, MAX_TAG_LEN, MAX_KEY_LEN = 6000, 8000, 250  # MLflow's limits
BATCH_ENTITIES, BATCH_TAGS = 1000, 100  # per log_batch call: all entities; params or tags


def flatten(d: Mapping[str, Any], prefix: str = "", *, sep: str = ".") -> dict[str, Any]:
    """Flattens nested mappings: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (leaves kept as is)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep=sep))
        else:
            out[name] = value
    return out


_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


def sanitize_metric_name(name: str) -> str:
    """A name MLflow accepts for a metric, param or tag (at most 250 characters).

    MLflow allows alphanumerics, ``_ - . : /`` and spaces, and rejects names that a path
    normalisation would change: ``..``, ``//``, a ``.`` segment, a leading or trailing
    ``/``. Other characters become ``_``; ``posterior/head_03`` is kept unchanged.
    """
    name = _BAD_NAME_CHARS.sub("_", str(name)[:MAX_KEY_LEN])
    while ".." in name:
        name = name.replace("..", "_")
    return "/".join("_" if part == "." else part for part in name.split("/") if part) or "_"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<abs cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve()}/mlflow.db"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()


def mlflow_client(uri: str) -> MlflowClient:
    """A new ``MlflowClient`` for ``uri``; an http(s) store's calls survive a server
    restart (:mod:`alrao_tune.tracking.retry`)."""
    from mlflow import MlflowClient

    if not uri.startswith(("http://", "https://")):
        return MlflowClient(uri)
    return RetryingClient(MlflowClient(uri), uri)  # type: ignore[return-value]


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Raises :class:`TrackingError` when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy or a server without /health)
    except (OSError, ValueError) as exc:
        raise TrackingError(
            f"cannot reach MLflow tracking server at {uri}: {exc}; start one with "
            "`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 "
            "--port 5000` or pass --tracking-uri sqlite:///mlflow.db") from exc


def prepare_store(uri: str, experiment: str, *, artifact_root: str | None = None) -> str:
    """Creates (or migrates) the store, gets or creates ``experiment``; returns its id.

    Call it in the driver before any trial: processes creating a fresh SQLite database at
    once race. Artifacts go to ``<artifact_root>/<experiment>`` when given, else for
    SQLite to ``<db dir>/mlartifacts/<experiment>``, else to the server's default.
    """
    from mlflow.exceptions import MlflowException

    check_reachable(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = mlflow_client(uri)  # creates and migrates the SQLite schema on first use
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = _artifact_location(experiment, db, artifact_root)
        try:
            return client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _artifact_location(experiment: str, db: Path | None, root: str | None) -> str | None:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-") or "experiment"
    if root:
        return f"{root.rstrip('/')}/{safe}" if "://" in root else str(Path(root).resolve() / safe)
    return str(db.parent / "mlartifacts" / safe) if db is not None else None


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[i:i + size] for i in range(0, len(items), size))


def clip(value: Any, limit: int) -> str:
    """``str(value)``, cut to ``limit`` characters (ending in ``...`` when cut)."""
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RunTree:
    """A thin helper over ``MlflowClient`` for nested runs of one experiment (picklable)."""

    def __init__(self, uri: str, experiment_id: str) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        """The ``MlflowClient`` (created on first use)."""
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    def start(self, name: str, *, parent_run_id: str | None = None,
              params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None) -> str:
        """Creates a RUNNING run (a child of ``parent_run_id``) with params; returns its id."""
        all_tags = {sanitize_metric_name(k): clip(v, MAX_TAG_LEN) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Logs flattened ``params`` ("a.b.c"), values clipped to 6,000 characters."""
        from mlflow.entities import Param

        items = [Param(sanitize_metric_name(k), clip(v, MAX_PARAM_LEN))
                 for k, v in flatten(params).items()]
        for chunk in _chunks(items, BATCH_TAGS):
            self.client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float],
                    step: int | None = None) -> None:
        """Logs the numeric values of ``metrics`` at ``step`` (default 0), batched."""
        now = int(time.time() * 1000)
        self.log_entries(run_id, [(sanitize_metric_name(k), float(v), step or 0, now)
                                  for k, v in metrics.items() if isinstance(v, numbers.Real)])

    def log_entries(self, run_id: str, entries: Sequence[tuple[str, float, int, int]],
                    tags: Mapping[str, Any] | None = None) -> None:
        """Logs ``(key, value, step, timestamp_ms)`` entries (valid keys) and tags.

        One ``log_batch`` call per 900 metrics and 100 tags (MLflow takes 1,000 entities).
        The tags go with the LAST metric batches: if a call fails (or the process dies)
        part-way, no tag (e.g. ``alrao_tune.last_step``) claims values that were not stored.
        """
        from mlflow.entities import Metric, RunTag

        metrics = [Metric(k, v, t, s) for k, v, s, t in entries]
        tag_items = [RunTag(sanitize_metric_name(k), clip(v, MAX_TAG_LEN))
                     for k, v in (tags or {}).items()]
        metric_chunks = list(_chunks(metrics, BATCH_ENTITIES - BATCH_TAGS))
        tag_chunks = list(_chunks(tag_items, BATCH_TAGS))
        tag_chunks = [()] * max(0, len(metric_chunks) - len(tag_chunks)) + tag_chunks
        for metric_chunk, tag_chunk in zip_longest(metric_chunks, tag_chunks, fillvalue=()):
            self.client.log_batch(run_id, metrics=metric_chunk, tags=tag_chunk)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Sets tags (values clipped to 8,000 characters), batched."""
        self.log_entries(run_id, (), tags)

    def log_artifact(self, run_id: str, local_path: str | Path,
                     artifact_path: str | None = None) -> None:
        """Uploads a local file or folder to the run's artifacts."""
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Writes ``text`` as the artifact ``artifact_file``."""
        self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        """Writes ``obj`` as a JSON or YAML artifact (by the file's extension)."""
        self.client.log_dict(run_id, obj, artifact_file)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """Ends the run as FINISHED, FAILED or KILLED."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, but got {status=}.")
        self.client.set_terminated(run_id, status)

    def reopen(self, run_id: str) -> dict[str, str]:
        """Marks an ended run RUNNING again (to continue it on resume); returns its tags."""
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return dict(run.data.tags)

    def find_run(self, *, parent_run_id: str | None, tag_key: str,
                 tag_value: str) -> str | None:
        """The newest active run with ``tag_key == tag_value`` under the parent, or None."""
        quote = "'" if "'" not in tag_value else '"'
        filters = [f"tags.`{PARENT_TAG}` = '{parent_run_id}'"] if parent_run_id else []
        if quote not in tag_value:
            filters.append(f"tags.`{tag_key}` = {quote}{tag_value}{quote}")
        runs = self.client.search_runs([self.experiment_id], " and ".join(filters),
                                       order_by=["attributes.start_time DESC"])
        return next((r.info.run_id for r in runs if r.data.tags.get(tag_key) == tag_value),
                    None)
