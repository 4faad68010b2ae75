"""The screening's winner as a model in hand: the best trial's weights at its best
validation epoch, rebuilt from its Tune checkpoint and logged to MLflow.

The winner is the trial behind the leaderboard's first row
(:func:`alrao_tune.report.screening.winner_trial`: stage 2's best trial of the best
architecture, or stage 1's when stage 2 is off). Its newest checkpoint holds the whole
trainer state, including ``best_state``: the weights at the best validation epoch, the
ones the leaderboard's test metrics were measured with. Those are loaded into the
trial's architecture and logged with :func:`alrao_tune.tracking.models.log_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from alrao_tune.tune.storage import Location

Progress = Callable[[str], None]
EXAMPLE_ROWS = 5  # rows of the test split kept as the model's input example


def best_weights_model(experiment: Location, trial_id: str) -> tuple[Any, Any]:
    """``(model, data)``: the trial's model with the weights of its best validation epoch
    (from its newest checkpoint) and the trial's dataset splits."""
    from alrao_tune.train import Trainer
    from alrao_tune.tune.checkpoints import read_state
    from alrao_tune.tune.runner import experiment_trials
    from alrao_tune.tune.trainable import dataset_for, trial_train_config

    trial = next((t for t in experiment_trials(experiment) if t.trial_id == trial_id), None)
    if trial is None or trial.checkpoint is None:
        raise LookupError(f"trial {trial_id} has no checkpoint in {experiment}")
    checkpoint = trial.checkpoint
    state = read_state(getattr(checkpoint, "filesystem", None), str(checkpoint.path))
    cfg = trial_train_config(trial.config).replace(device="cpu")
    data = dataset_for(cfg)
    trainer = Trainer(cfg, data)
    trainer.model.load_state_dict(state["best_state"] or state["model"])
    return trainer.model.eval(), data


def log_winner(tree: Any, run_id: str, experiment: Location, trial: pd.Series,
               registered_name: str | None, say: Progress) -> str | None:
    """Logs the winner ``trial`` (a row of the trial table) under the pipeline run;
    returns its model URI. A failure is said and returns None: the screening's results
    stand without the model."""
    from alrao_tune.tracking.models import log_model

    try:
        model, data = best_weights_model(experiment, str(trial["trial_id"]))
        metrics = {k: trial[k] for k in ("best_val_loss", "best_val_acc", "test_loss",
                                         "test_acc", "lr", "n_params") if k in trial}
        params = {"arch": trial["arch"], "method": trial["method"], "trial_id": trial["trial_id"],
                  "trial_run_id": trial["run_id"], "lr": trial["lr"]}
        logged = log_model(tree.uri, run_id, model, data.x_test[:EXAMPLE_ROWS], metrics,
                           registered_name=registered_name, params=params)
    except Exception as err:  # noqa: BLE001 - the leaderboard stands without the model
        if registered_name:  # asked for explicitly: an error
            from alrao_tune.tracking import TrackingError

            raise TrackingError(f"cannot log and register the winner's model as "
                                f"{registered_name!r}: {type(err).__name__}: {err}") from err
        say(f"  could not log the winner's model: {type(err).__name__}: {err}")
        return None
    where = (f"; registered as {logged.registered_name} version {logged.version}"
             if logged.registered_name else "")
    say(f"winner {trial['arch']} (trial {trial['trial_id']}) logged as {logged.uri}{where}")
    return logged.uri
