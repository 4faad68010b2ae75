"""MLflowTrialCallback driven directly (no Tuner): a callback that dies and a new one that
resumes the same trial runs — exactly-once values, lagging tags, backfilled epochs."""

from __future__ import annotations

from pathlib import Path

import pytest

from alrao_tune.tracking import RunTree, prepare_store


def test_close_kills_open_runs_and_callback_pickles(mlflow_uri: str) -> None:
    import cloudpickle
    from ray.tune.experiment import Trial

    from alrao_tune.tracking.callback import MLflowTrialCallback

    tree = RunTree(mlflow_uri, prepare_store(mlflow_uri, "close"))
    stage = tree.start("stage")
    callback = MLflowTrialCallback(tree, stage, trial_name_fn=lambda t: f"arch-{t.config['a']}",
                                   extra_tags={"stage": "s1"}, param_keys=["a"])
    trial = Trial("fn", config={"a": 1, "b": {"c": 2}}, trial_id="t1", stub=True)
    callback.on_trial_start(0, [trial], trial)
    result = {"epoch": 1, "val_loss": float("inf"), "nested": {"x": 1}, "note": "hi",
              "step_metrics": {"bad": [1, 2]}}
    callback.on_trial_result(0, [trial], trial, result)
    # Tune pickles the callback into tuner.pkl: the copy has no runtime state
    copy = cloudpickle.loads(cloudpickle.dumps(callback))
    assert copy.run_ids == callback.run_ids and copy.stats["values"] == 0
    callback.close()
    run = tree.client.get_run(callback.run_ids["t1"])
    # never left RUNNING; name, extra tags, param selection, nested metrics, string tags
    assert run.info.status == "KILLED" and run.info.run_name == "arch-1"
    assert run.data.params == {"a": "1"} and run.data.tags["stage"] == "s1"
    assert run.data.metrics["nested/x"] == 1.0 and run.data.tags["note"] == "hi"
    # +inf is clipped by MLflow and counted; malformed step_metrics are skipped
    assert run.data.metrics["val_loss"] > 1e308
    assert run.data.tags["alrao_tune.nonfinite_values"] == "1"
    assert "bad" not in run.data.metrics


def test_resumed_run_skips_values_stored_before_a_lagging_last_step_tag(tmp_path: Path) -> None:
    """MLflow's SQL store commits a batch's metrics and its tags in two transactions: a
    driver killed between them leaves values of step 2 stored with ``last_step`` still 1.
    The resumed callback takes the last step from the stored ``time_total_s`` values, so
    the replayed step 2 is skipped and step 3 is logged: each value once."""
    from ray.tune.experiment import Trial

    from alrao_tune.schema import LAST_STEP_TAG
    from alrao_tune.tracking import RunTree, prepare_store
    from alrao_tune.tracking.callback import MLflowTrialCallback

    uri = f"sqlite:///{tmp_path}/m.db"
    tree = RunTree(uri, prepare_store(uri, "lag"))
    stage = tree.start("stage")
    trial = Trial("fn", config={"a": 1}, trial_id="t1", stub=True)

    def result(epoch):
        return {"epoch": epoch, "val_loss": 1.0 / epoch, "time_total_s": float(epoch)}

    first = MLflowTrialCallback(tree, stage, background=False)
    for epoch in (1, 2):
        first.on_trial_result(0, [trial], trial, result(epoch))
        first.get_state()  # Tune saves its experiment state
    run_id = first.run_ids["t1"]
    tree.set_tags(run_id, {LAST_STEP_TAG: "1"})  # the tag transaction of step 2 was lost
    # the driver died: no close(); a new driver resumes the trial from its epoch-1 checkpoint
    second = MLflowTrialCallback(tree, stage, background=False)
    for epoch in (2, 3):
        second.on_trial_result(0, [trial], trial, result(epoch))
    second.on_trial_complete(0, [trial], trial)
    assert second.run_ids["t1"] == run_id
    client = tree.client
    for key in ("val_loss", "time_total_s", "epoch"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3], key
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["alrao_tune.replayed_results"] == "1"


def test_resume_from_a_newer_checkpoint_backfills_the_epochs_mlflow_lacks(
        tmp_path: Path) -> None:
    """A SIGKILL just after Tune deleted the checkpoint its saved state names (epoch 2):
    the resumed trial continues from its epoch-4 checkpoint, so epochs 3 and 4 are never
    reported again. Their values come from the records in the first result after the
    restore, each once; the epochs MLflow has are not written twice."""
    from ray.tune.experiment import Trial

    from alrao_tune.schema import BACKFILLED_TAG, RESTORED_KEY
    from alrao_tune.tracking import RunTree, prepare_store
    from alrao_tune.tracking.callback import MLflowTrialCallback

    uri = f"sqlite:///{tmp_path}/m.db"
    tree = RunTree(uri, prepare_store(uri, "gap"))
    stage = tree.start("stage")
    trial = Trial("fn", config={"a": 1}, trial_id="t1", stub=True)

    def record(epoch):
        return {"epoch": epoch, "val_loss": 1.0 / epoch, "status": "running",
                "step_metrics": {"posterior/head0": [[10 * epoch, 0.1 * epoch]]}}

    first = MLflowTrialCallback(tree, stage, background=False)
    for epoch in (1, 2):
        first.on_trial_result(0, [trial], trial, {**record(epoch), "time_total_s": 1.0 * epoch})
        first.get_state()
    run_id = first.run_ids["t1"]
    second = MLflowTrialCallback(tree, stage, background=False)
    restored = [record(e) for e in (1, 2, 3, 4)]
    second.on_trial_result(0, [trial], trial, {**record(5), "time_total_s": 9.0,
                                              "time_this_iter_s": 2.0, RESTORED_KEY: restored})
    second.on_trial_complete(0, [trial], trial)
    client = tree.client
    history = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
               for key in ("val_loss", "time_total_s", "epoch", "posterior/head0")}
    assert history["val_loss"] == {e: 1.0 / e for e in range(1, 6)}
    assert history["epoch"] == {e: float(e) for e in range(1, 6)}
    assert history["posterior/head0"] == pytest.approx({10 * e: 0.1 * e for e in range(1, 6)})
    # the backfilled epochs carry the trial's time at the restore (9 - 2 s)
    assert history["time_total_s"] == {1: 1.0, 2: 2.0, 3: 7.0, 4: 7.0, 5: 9.0}
    for key in ("val_loss", "epoch"):
        assert len(client.get_metric_history(run_id, key)) == 5, key
    run = client.get_run(run_id)
    assert run.data.tags[BACKFILLED_TAG] == "2" and RESTORED_KEY not in run.data.metrics
    assert "alrao_tune.replayed_results" not in run.data.tags
