"""``alrao-tune bench soak`` and the fault-injecting trainable it runs (bench/faults.py)."""

from __future__ import annotations

import pytest

from alrao_tune.bench.faults import check_fault, faulty_trainable


@pytest.mark.parametrize("fault", ["raise", "nan", "crash_once:/tmp/marker"])
def test_known_faults(fault):
    assert check_fault(fault) == fault


@pytest.mark.parametrize("fault", ["explode", "crash_once:", ""])
def test_unknown_faults_are_refused_before_anything_runs(fault):
    with pytest.raises(ValueError, match="unknown fault"):
        faulty_trainable({"arch": fault})


@pytest.mark.slow
def test_soak_tiny(ray_local, tmp_path, mlflow_uri):
    from alrao_tune.bench.soak import soak

    # seed 1: trial 0 crashes once, trial 1 raises; MLflow: a copy of the migrated empty store
    out = soak(n_trials=2, failure_rate=1.0, seed=1, tracking_uri=mlflow_uri,
               storage=tmp_path / "runs", progress=None)
    assert out["ok"], out
    assert out["injected"] == {"crash_once": 1, "raise": 1}
    assert out["trials"] == 2 and out["mlflow_runs"] == 2
    assert out["completed"] == 1 and out["failed"] == 1 and out["retried"] == 1
    assert out["retried"] == out["injected"]["crash_once"]
    assert out["failed"] == out["injected"]["raise"]
