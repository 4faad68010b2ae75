"""run_job's guard: a Tune experiment that ended with unfinished trials (Tune's own Ctrl-C
handler, kept in a notebook) is an interruption, not a finished stage."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from alrao_tune.tune.runner import TuneJob, _finished


def grid_of(*statuses: str) -> SimpleNamespace:
    trials = [SimpleNamespace(trial_id=f"t{i}", status=s) for i, s in enumerate(statuses)]
    return SimpleNamespace(_experiment_analysis=SimpleNamespace(trials=trials))


def job(stop=None) -> TuneJob:
    return TuneJob("x", {}, "/tmp", {"cpu": 1}, "best_val_loss", "min", stop=stop)


def test_an_experiment_whose_trials_all_ended_is_returned():
    grid = grid_of("TERMINATED", "ERROR", "TERMINATED")
    assert _finished(grid, job()) is grid


def test_unfinished_trials_mean_the_experiment_was_interrupted():
    with pytest.raises(KeyboardInterrupt, match="2 trial"):
        _finished(grid_of("TERMINATED", "PENDING", "RUNNING"), job())


def test_a_budget_stopper_ends_experiments_with_unfinished_trials_on_purpose():
    grid = grid_of("TERMINATED", "PENDING")
    assert _finished(grid, job(stop=object())) is grid
