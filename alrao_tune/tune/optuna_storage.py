"""Where stage 2's Optuna studies live, so people can browse them and ``--resume`` continues
them.

One study per top-k architecture, named ``<space>/<pipeline run id>/<architecture>``, in
one Optuna storage per screening location:

* ``stage2.storage`` unset: an SQLite file ``optuna.db`` beside the MLflow SQLite store
  ``mlflow.db`` (``<stem>-optuna.db`` beside any other ``<stem>.db``; MLflow and Optuna
  both keep an ``alembic_version`` table: never the same file), or in
  the ``--storage`` folder when MLflow is a server; in memory when neither is local;
* ``stage2.storage: memory``: in memory (gone when the screening ends);
* any other value: an Optuna RDB URL (``sqlite:////abs/optuna.db``,
  ``postgresql://user@host/db``, ...).

Browse them with ``optuna-dashboard sqlite:///optuna.db``. Each study's COMPLETE trials
are the stage-2 trials of its architecture (value: the trial's best validation value);
an errored trial is FAIL; so is a trial whose Tune trial a SIGKILL took before Tune saved
it (the resumed searcher hands its configuration out again; :func:`fail_orphans`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alrao_tune.train.config import ConfigError
from alrao_tune.tune.storage import Location

MEMORY = "memory"
FILE_NAME = "optuna.db"


def storage_url(setting: str | None, tracking_uri: str, storage: Location) -> str | None:
    """The RDB URL of the studies (None: in memory); see the module docstring."""
    from alrao_tune.tracking import sqlite_path

    if setting == MEMORY:
        return None
    if setting:
        return setting
    db = sqlite_path(tracking_uri)
    if db is not None:  # mlflow.db -> optuna.db; runs.db -> runs-optuna.db
        name = FILE_NAME if db.name == "mlflow.db" else f"{db.stem}-{FILE_NAME}"
        return f"sqlite:///{db.parent / name}"
    if storage.local is not None:
        return f"sqlite:///{Path(storage.path) / FILE_NAME}"
    return None


def _bad_url(url: str, err: Exception) -> ConfigError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return ConfigError(
        f"stage2.storage = {url!r}: Optuna cannot open it ({type(err).__name__}: "
        f"{first}); give an RDB URL such as sqlite:////abs/path/optuna.db, 'memory', "
        "or leave it out (an optuna.db beside the MLflow store)")


def check_url(url: str | None) -> None:
    """Checks ``url`` before anything is written (nothing is created or connected): it parses
    as an SQLAlchemy URL and its database driver imports.

    Raises:
        ConfigError: it does not (the message names it and the fix).
    """
    if url is None:
        return
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect()
    except Exception as err:  # noqa: BLE001 - unparsable URL, unknown dialect, no driver
        raise _bad_url(url, err) from err


def open_storage(url: str | None) -> Any:
    """An Optuna storage for ``url`` (created and migrated now: the screening calls it when
    stage 2 starts, after the driver's checks; in memory for None).

    Raises:
        ConfigError: Optuna cannot open ``url`` (the message names it and the fix).
    """
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - missing driver, unreachable DB
        raise _bad_url(url, err) from err


def study_name(space: str, pipeline_run_id: str, arch: str) -> str:
    """The study of ``arch`` in the screening whose pipeline run is ``pipeline_run_id``."""
    return f"{space}/{pipeline_run_id}/{arch}"


def enqueue_once(study: Any, params: dict[str, float]) -> bool:
    """Enqueues ``params`` unless a waiting, running or complete trial has them already
    (a study resumed after a kill). Returns whether it enqueued."""
    from optuna.trial import TrialState

    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    for trial in study.get_trials(deepcopy=False, states=live):
        if trial.system_attrs.get("fixed_params", trial.params) == params:
            return False
    study.enqueue_trial(params)
    return True


def fail_orphans(study: Any) -> int:
    """Ends every RUNNING trial FAIL: call it only when no trial of the study is live.
    Returns how many."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(running)


def close_studies(storage: Any, names: list[str]) -> int:
    """After stage 2: :func:`fail_orphans` on each study; returns how many trials."""
    import optuna

    return sum(fail_orphans(optuna.load_study(study_name=name, storage=storage))
               for name in names)
