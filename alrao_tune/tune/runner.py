"""One place that builds and runs a Ray Tune experiment for every stage and job.

It also turns a ``ResultGrid`` into a pandas table of trials (one row per trial) with the
columns the reports rank on: ``arch``, ``seed``, ``status``, ``best_val_loss``,
``best_val_acc``, ``test_loss``, ``test_acc``, ``lr_eff``, ``epochs``, ``time_total_s``,
``n_params``, the searched values, the MLflow ``run_id`` and the Ray ``node_id`` that
produced the trial's last result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alrao_tune.logs import quiet_logger
from alrao_tune.schema import TRIAL_COLUMNS
from alrao_tune.tune._ray_compat import replace_callbacks, result_trials
from alrao_tune.tune.storage import Location
from alrao_tune.tune.trainable import trial_config

log = logging.getLogger(__name__)

# Retries of a trial whose worker died or that raised, each from its last checkpoint.
MAX_FAILURES = 1
# Trial checkpoints kept on disk. Tune deletes the oldest when it registers a new one and
# saves its experiment state after that (forced every CHECKPOINTS_KEPT checkpoints), so a
# SIGKILL in between leaves a state naming a deleted checkpoint whatever the number; a
# resumed trial then continues from a newer one (alrao_tune.tune.checkpoints).
CHECKPOINTS_KEPT = 2

# ExperimentAnalysis warns that the per-trial result files (off by design) are missing
_ANALYSIS_LOG = "ray.tune.analysis.experiment_analysis"


@dataclass
class TuneJob:
    """What one Tune experiment needs; built by the stages, run by :func:`run_job`."""

    name: str
    param_space: dict[str, Any]
    storage: Location | Path | str  # a local folder or a URI (see alrao_tune.tune.storage)
    resources: Mapping[str, float]
    metric: str
    mode: str
    num_samples: int = 1
    search_alg: Any = None
    scheduler: Any = None
    callbacks: Sequence[Any] = field(default_factory=list)
    max_failures: int = MAX_FAILURES
    max_concurrent: int = 0
    stop: Any = None  # a tune.Stopper (e.g. a compute budget), or None

    @property
    def location(self) -> Location:
        """The storage: ``str()`` of it is Tune's ``storage_path`` (a URI untouched)."""
        return self.storage if isinstance(self.storage, Location) \
            else Location.parse(self.storage)

    @property
    def path(self) -> Location:
        """The Tune experiment folder."""
        return self.location / self.name


def run_job(job: TuneJob, *, resume: bool = False, trainable: Callable | None = None) -> Any:
    """Runs (or, with ``resume``, restores and finishes) the experiment; returns its ResultGrid.

    On ``resume`` an experiment that Tune can restore continues from its experiment state:
    finished trials are kept, unfinished and errored ones continue from their last
    checkpoint, the search algorithm comes back with its saved state (Tune pickles it
    into the experiment folder; :class:`~alrao_tune.tune.search.PerArchSearch` saves its
    Optuna studies and samplers), and ``job.callbacks`` replace the ones pickled in
    ``tuner.pkl`` (they get the saved callback state through ``set_state``). An
    experiment that never got as far as ``tuner.pkl`` is started afresh.
    """
    from ray import tune

    from alrao_tune.tune.trainable import train_trial

    fn = tune.with_resources(trainable or train_trial, _resources(job.resources))
    path = job.path
    if resume and tune.Tuner.can_restore(str(path)):
        from alrao_tune.tune.checkpoints import restore_missing

        for trial in experiment_trials(path):
            if trial.status != "TERMINATED":
                restore_missing(trial)  # announced by check_resumable
        tuner = tune.Tuner.restore(
            str(path), fn, resume_unfinished=True, resume_errored=True,
            param_space=job.param_space)
        replace_callbacks(tuner, job.callbacks)
        return _finished(tuner.fit(), job)
    tuner = tune.Tuner(
        fn,
        param_space=job.param_space,
        tune_config=tune.TuneConfig(
            metric=job.metric, mode=job.mode, num_samples=job.num_samples,
            search_alg=job.search_alg, scheduler=job.scheduler, reuse_actors=True,
            max_concurrent_trials=job.max_concurrent or None),
        run_config=tune.RunConfig(
            name=job.name, storage_path=str(job.location), callbacks=list(job.callbacks),
            stop=job.stop,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=tune.FailureConfig(max_failures=job.max_failures),
            verbose=0),
    )
    return _finished(tuner.fit(), job)


def _finished(grid: Any, job: TuneJob) -> Any:
    """``grid``, unless Tune ended the experiment with trials unfinished: its own SIGINT
    handler does that on Ctrl-C (the command line turns it off with
    ``TUNE_DISABLE_SIGINT_HANDLER``; a notebook keeps it). That is an interruption, raised
    as ``KeyboardInterrupt`` (the job is recorded KILLED and ``--resume`` finishes it),
    never a finished stage with missing trials. A job with a ``stop`` (a compute budget)
    ends with unfinished trials on purpose: it is returned as it is."""
    if job.stop is not None:
        return grid
    unfinished = [t for t in result_trials(grid) if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:
        raise KeyboardInterrupt(f"Ray Tune stopped the experiment with {len(unfinished)} "
                                "trial(s) unfinished")
    return grid


def experiment_trials(path: str | Path | Location) -> list[Any]:
    """The trials of a Tune experiment folder as its newest experiment state saved them
    (``ray.tune.experiment.Trial`` objects: ``trial_id``, ``status``, ``checkpoint``)."""
    from ray.tune import ExperimentAnalysis

    with quiet_logger(_ANALYSIS_LOG):
        return list(ExperimentAnalysis(str(path)).trials)


def load_results(job: TuneJob) -> Any:
    """The ResultGrid of a finished experiment, read from its folder without running it."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    with quiet_logger(_ANALYSIS_LOG):
        return ResultGrid(ExperimentAnalysis(
            str(job.path), default_metric=job.metric, default_mode=job.mode))


def is_finished(path: str | Path | Location) -> bool:
    """Whether every trial of the experiment at ``path`` ended (TERMINATED or ERROR)."""
    try:
        trials = experiment_trials(path)
    except Exception:  # noqa: BLE001 - no (readable) experiment state: not finished
        return False
    return bool(trials) and all(t.status in ("TERMINATED", "ERROR") for t in trials)


def check_resumable(path: str | Path | Location, say: Callable[[str], None] | None = None
                    ) -> int:
    """Reads the checkpoint every unfinished or errored trial would resume from.

    Returns the number of trials that a restore will continue (0 when there is no
    experiment state yet). Raises :class:`~alrao_tune.train.CheckpointError` (one line,
    naming the trial and the file) for an unreadable checkpoint, or a missing one with no
    readable checkpoint of the trial beside it, so that ``--resume`` fails before anything
    is written. A missing one with a readable sibling is what the trial continues from
    (:func:`~alrao_tune.tune.checkpoints.usable_checkpoint`); ``say`` is told.
    """
    from ray import tune

    from alrao_tune.train import CheckpointError
    from alrao_tune.tune.checkpoints import usable_checkpoint

    if not tune.Tuner.can_restore(str(path)):
        return 0
    try:
        trials = [t for t in experiment_trials(path) if t.status != "TERMINATED"]
    except Exception as err:  # noqa: BLE001 - e.g. a state file cut short by the kill
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(
            f"cannot resume {path}: Tune's experiment state there is unreadable "
            f"({type(err).__name__}: {first}); start the screening again without "
            "--resume") from err
    for trial in trials:
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None:
            continue  # it starts from scratch
        try:
            _, note = usable_checkpoint(checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume trial {trial.trial_id}: {err}; start the "
                                  "screening again without --resume") from err
        if note and say is not None:
            say(f"  trial {trial.trial_id}: {note}")
    return len(trials)




def _resources(resources: Mapping[str, float]) -> dict[str, float]:
    out = {"cpu": float(resources.get("cpu", 1))}
    if float(resources.get("gpu", 0)) > 0:
        out["gpu"] = float(resources["gpu"])
    return out


def trials_frame(grid: Any, run_ids: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per trial of a ResultGrid (errored trials included, with their error)."""
    rows = []
    for result, tune_trial_id in zip(grid, _trial_ids(grid)):
        metrics = dict(result.metrics or {})
        config = trial_config(result.config or {})
        train = dict(config.get("train", {}))
        trial_id = metrics.get("trial_id") or tune_trial_id or Path(result.path).name
        row = {
            "trial_id": trial_id,
            "stage": config.get("stage", ""),
            "proxy": config.get("proxy", ""),
            "arch": config.get("arch_name", ""),
            "method": train.get("method", ""),
            "seed": train.get("seed"),
            "status": _status(result, metrics),
            "epochs": metrics.get("epoch", 0),
            "error": _error_text(result.error),
            "run_id": (run_ids or {}).get(trial_id),
            "node_id": metrics.get("node_id", ""),  # the Ray node of its last result
        }
        for key in ("best_val_loss", "best_val_acc", "best_best_head_val_loss", "test_loss",
                    "test_acc", "lr_eff", "time_total_s", "n_params"):
            row[key] = metrics.get(key, math.nan)
        for key in ("lr", "momentum", "weight_decay"):
            row[key] = config.get(key, train.get(key, math.nan))
        if "run_lr" in metrics:  # the rate actually used (e.g. found by an LR range test)
            row["lr"] = metrics["run_lr"]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    return frame.sort_values(["arch", "seed", "trial_id"], kind="stable").reset_index(drop=True)


def _trial_ids(grid: Any) -> list[str | None]:
    """Tune's trial id of every result (also of a trial that never reported: then its
    result has no ``trial_id`` metric). A ResultGrid lists its results in the order of
    its experiment analysis' trials."""
    trials = result_trials(grid)
    if len(trials) != len(grid):  # pragma: no cover - Ray internals
        return [None] * len(grid)
    return [getattr(t, "trial_id", None) for t in trials]


def _status(result: Any, metrics: Mapping[str, Any]) -> str:
    if result.error is not None:
        return "error"
    if metrics.get("status") == "diverged" or metrics.get("run_status") == "diverged":
        return "diverged"
    return str(metrics.get("run_status") or "stopped")


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error).strip().splitlines()
    return text[-1][:300] if text else type(error).__name__
