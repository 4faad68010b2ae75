"""One place that builds and runs a Ray Tune experiment for every stage and job.

It also turns a ``ResultGrid`` into a pandas table of trials (one row per trial) with the
columns the reports rank on: ``arch``, ``seed``, ``status``, ``best_val_loss``,
``best_val_acc``, ``test_loss``, ``test_acc``, ``lr_eff``, ``epochs``, ``time_total_s``,
``n_params``, the searched values and the MLflow ``run_id``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alrao_tune.tune.trainable import trial_config

TRIAL_COLUMNS = (
    "trial_id", "stage", "proxy", "arch", "method", "seed", "status", "best_val_loss",
    "best_val_acc",
    "best_best_head_val_loss", "test_loss", "test_acc", "lr_eff", "epochs", "time_total_s",
    "n_params", "lr", "momentum", "weight_decay", "error", "run_id",
)


@dataclass
class TuneJob:
    """What one Tune experiment needs; built by the stages, run by :func:`run_job`."""

    name: str
    param_space: dict[str, Any]
    storage: Path
    resources: Mapping[str, float]
    metric: str
    mode: str
    num_samples: int = 1
    search_alg: Any = None
    scheduler: Any = None
    callbacks: Sequence[Any] = field(default_factory=list)
    max_failures: int = 1
    max_concurrent: int = 0


def run_job(job: TuneJob, *, resume: bool = False, trainable: Callable | None = None) -> Any:
    """Runs (or, with ``resume``, restores and finishes) the experiment; returns its ResultGrid."""
    from ray import tune

    from alrao_tune.tune.trainable import train_trial

    fn = tune.with_resources(trainable or train_trial, _resources(job.resources))
    path = job.storage / job.name
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), fn, resume_unfinished=True, resume_errored=True,
            param_space=job.param_space)
        return tuner.fit()
    tuner = tune.Tuner(
        fn,
        param_space=job.param_space,
        tune_config=tune.TuneConfig(
            metric=job.metric, mode=job.mode, num_samples=job.num_samples,
            search_alg=job.search_alg, scheduler=job.scheduler, reuse_actors=True,
            max_concurrent_trials=job.max_concurrent or None),
        run_config=tune.RunConfig(
            name=job.name, storage_path=str(job.storage), callbacks=list(job.callbacks),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=job.max_failures),
            verbose=0),
    )
    return tuner.fit()


def _resources(resources: Mapping[str, float]) -> dict[str, float]:
    out = {"cpu": float(resources.get("cpu", 1))}
    if float(resources.get("gpu", 0)) > 0:
        out["gpu"] = float(resources["gpu"])
    return out


def trials_frame(grid: Any, run_ids: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per trial of a ResultGrid (errored trials included, with their error)."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        config = trial_config(result.config or {})
        train = dict(config.get("train", {}))
        trial_id = metrics.get("trial_id") or Path(result.path).name
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
