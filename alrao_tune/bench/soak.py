"""``alrao-tune bench soak``: many tiny trials with injected faults, then an MLflow audit.

ONE Ray Tune experiment (the screening's own trainable, runner and MLflow callback) of
``n_trials`` tiny Alrao trials (blobs, a one-layer MLP, 2 epochs, a switch posterior
logged at every step), where a random ``failure_rate`` share of the trials gets a
fault (see :mod:`alrao_tune.bench.faults`, injected by the trainable), half ``crash_once`` (the
worker process dies at epoch 2, Tune retries the trial from its epoch-1 checkpoint) and
half ``raise`` (the trial fails for good). Then it checks that nothing was lost: one
MLflow run per trial, none RUNNING, every run holding each reported value exactly once
(per-epoch metrics at epochs 1..last, per-step posteriors at every step, the total equal
to what the driver-side callback accepted), retried == crashes and failed == raises.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPOCHS, N_TRAIN, BATCH, HEADS = 2, 256, 32, 3
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH)
EXPERIMENT = "alrao-tune soak"

log = logging.getLogger(__name__)


def soak(n_trials: int = 50, failure_rate: float = 0.2, seed: int = 0,
         tracking_uri: str | None = None, storage: str | Path | None = None,
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs the soak (see the module docstring) and returns its figures and checks.

    Args:
        n_trials: trials in the one Tune experiment.
        failure_rate: share of trials given a fault (half crash once, half raise).
        seed: seeds the fault plan (trial ``i`` trains with seed ``i``).
        tracking_uri: MLflow store (default: a fresh SQLite file in a temporary folder).
        storage: Tune storage folder (default: that temporary folder).
        progress: where progress lines go (default: this module's logger, at INFO).

    Returns:
        ``trials, completed, retried`` (completed after a retry), ``retries`` (all, also of
        trials that failed for good), ``failed, injected {crash_once, raise}, mlflow_runs,
        running_runs, duplicate_runs, values_reported, values_in_mlflow, bad_runs`` (runs
        whose histories are not exactly the reported steps), ``wall_s``,
        ``trials_per_min``, ``ok`` (every check passed), ``tracking_uri``, ``storage``.
    """
    from ray import tune

    from alrao_tune import tracking
    from alrao_tune.tracking.callback import MLflowTrialCallback
    from alrao_tune.tune.runner import TuneJob
    from alrao_tune.tune.trainable import trial_config

    if n_trials < 1 or not 0 <= failure_rate <= 1:
        from alrao_tune.train.config import ConfigError

        raise ConfigError(f"soak: need --trials >= 1 and 0 <= --failure-rate <= 1, got "
                          f"{n_trials} and {failure_rate}.")
    say = progress or log.info
    work = Path(tempfile.mkdtemp(prefix="alrao-soak-"))
    storage = Path(storage or work).expanduser().resolve()
    uri = tracking_uri or f"sqlite:///{work}/mlflow.db"
    markers = storage / "soak-markers"
    markers.mkdir(parents=True, exist_ok=True)

    trials, faults, injected = _plan(n_trials, failure_rate, seed, markers)
    experiment_id = tracking.prepare_store(uri, EXPERIMENT)
    tree = tracking.RunTree(uri, experiment_id)
    parent = tree.start(f"soak n={n_trials} rate={failure_rate} seed={seed}",
                        params={"n_trials": n_trials, "failure_rate": failure_rate,
                                "seed": seed, "epochs": EPOCHS})
    callback = MLflowTrialCallback(
        tree, parent, trial_name_fn=lambda t: trial_config(t.config)["arch_name"])
    job = TuneJob(name=f"soak-{time.strftime('%Y%m%d-%H%M%S')}-{seed}",
                  param_space={"trial": tune.grid_search(trials)}, storage=storage,
                  resources={"cpu": 1}, metric="best_val_loss", mode="min",
                  callbacks=[callback])
    say(f"soak: {n_trials} trials, {injected['crash_once']} crash once, {injected['raise']} "
        f"raise; MLflow {uri}, storage {storage}")
    out = _run_and_audit(tree, parent, job, callback, faults)
    out.update(injected=injected, tracking_uri=uri, storage=str(storage))
    out["ok"] = _all_checks_pass(out, n_trials)
    tree.log_metrics(parent, {k: v for k, v in out.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
    tree.end(parent, "FINISHED")
    say(format_soak(out))
    return out


def _run_and_audit(tree: Any, parent: str, job: Any, callback: Any,
                   faults: dict[str, str]) -> dict[str, Any]:
    """Runs the experiment with the faulty trainable, then audits MLflow (the parent run
    ends FAILED if either fails)."""
    from alrao_tune.bench.faults import faulty_trainable
    from alrao_tune.tune.runner import run_job, trials_frame
    from alrao_tune.tune.session import ray_session

    t0 = time.perf_counter()
    try:
        with ray_session():
            grid = run_job(job, trainable=faulty_trainable(faults))
        callback.close()
        wall = time.perf_counter() - t0
        frame = trials_frame(grid, callback.run_ids)
        out = _audit(tree, parent, frame, callback.stats["values"])
    except BaseException:
        callback.close()
        tree.end(parent, "FAILED")
        raise
    out.update(trials=len(frame), completed=int((frame["status"] != "error").sum()),
               failed=int((frame["status"] == "error").sum()), wall_s=wall,
               trials_per_min=60 * len(frame) / wall if wall else math.nan)
    return out


def _plan(n_trials: int, failure_rate: float, seed: int, markers: Path
          ) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, int]]:
    """The trial configs, the faults by architecture name (see
    :mod:`alrao_tune.bench.faults`) and how many of each kind."""
    rng = random.Random(seed)
    trials, faults, injected = [], {}, {"crash_once": 0, "raise": 0}
    for i in range(n_trials):
        name = f"soak-{i:03d}"
        trials.append({"stage": "soak", "arch_name": name, "train": _train_config(i)})
        if rng.random() < failure_rate:
            kind = rng.choice(("crash_once", "raise"))
            injected[kind] += 1
            faults[name] = f"crash_once:{markers / f'{i:03d}'}" if kind == "crash_once" \
                else "raise"
    return trials, faults, injected


def _all_checks_pass(out: dict[str, Any], n_trials: int) -> bool:
    """Nothing lost or duplicated, every crash retried, every raise failed."""
    injected = out["injected"]
    return bool(
        out["trials"] == n_trials and out["mlflow_runs"] == n_trials
        and not out["running_runs"] and not out["duplicate_runs"] and not out["bad_runs"]
        and out["values_in_mlflow"] == out["values_reported"]
        and out["retried"] == injected["crash_once"] and out["failed"] == injected["raise"])


def _train_config(seed: int) -> dict[str, Any]:
    return {"dataset": "blobs", "dataset_options": {"n_train": N_TRAIN, "n_features": 6,
                                                    "n_classes": 3},
            "arch": {"family": "mlp", "widths": [8]}, "method": "alrao", "seed": seed,
            "epochs": EPOCHS, "batch_size": BATCH, "patience": None, "device": "cpu",
            "lr_min": 1e-3, "lr_max": 1.0, "n_heads": HEADS, "posterior_every": 1}


def _audit(tree: Any, parent: str, frame: Any, values_reported: float) -> dict[str, Any]:
    """Compares every trial run's metric histories with what its trial reported."""
    from alrao_tune.schema import FAILURES_TAG, PARENT_TAG, TRIAL_ID_TAG

    client = tree.client
    runs, token = [], None
    while True:
        page = client.search_runs([tree.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        if not (token := page.token):
            break
    by_trial: dict[str, list[Any]] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags.get(TRIAL_ID_TAG, ""), []).append(run)
    epochs = dict(zip(frame["trial_id"], frame["epochs"]))
    values, bad = 0, []
    for trial_id, found in by_trial.items():
        run = found[0]
        last = int(epochs.get(trial_id, 0) or 0)
        expect = {"val_loss": list(range(1, last + 1)),
                  "posterior/head_00": list(range(1, last * STEPS_PER_EPOCH + 1))}
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            values += len(steps)
            if len(steps) != len(set(steps)) or (key in expect
                                                 and sorted(steps) != expect[key]):
                bad.append(f"{run.info.run_name}:{key}")
    return {
        "mlflow_runs": len(runs),
        "running_runs": sum(r.info.status == "RUNNING" for r in runs),
        "duplicate_runs": sum(len(v) - 1 for v in by_trial.values()),
        # completed after at least one retry (a trial that raised was retried too, then
        # failed for good: it counts as failed)
        "retried": sum(FAILURES_TAG in r.data.tags and r.info.status == "FINISHED"
                       for r in runs),
        "retries": sum(int(r.data.tags.get(FAILURES_TAG, 0)) for r in runs),
        "values_reported": int(values_reported), "values_in_mlflow": values,
        "bad_runs": bad,
    }


def format_soak(out: dict[str, Any]) -> str:
    """The soak's figures as a few lines of text."""
    return (f"soak: {out['trials']} trials in {out['wall_s']:.0f}s "
            f"({out['trials_per_min']:.1f}/min): {out['completed']} completed "
            f"({out['retried']} after a retry), {out['failed']} failed; injected "
            f"{out['injected']['crash_once']} crash_once + {out['injected']['raise']} raise\n"
            f"MLflow: {out['mlflow_runs']} runs ({out['running_runs']} RUNNING, "
            f"{out['duplicate_runs']} duplicates), {out['values_in_mlflow']} values stored of "
            f"{out['values_reported']} reported, {len(out['bad_runs'])} runs with missing or "
            f"duplicated steps -> {'OK' if out['ok'] else 'FAILED'}")
