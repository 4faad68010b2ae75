"""alrao_tune.tracking against real Ray Tune runs and real SQLite MLflow stores."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from alrao_tune.schema import (
    ERROR_TAG,
    LAST_STEP_TAG,
    REPLAYED_TAG,
    STOPPED_TAG,
    TRIAL_ID_TAG,
)
from alrao_tune.tracking import (
    RunTree,
    TrackingError,
    flatten,
    prepare_store,
    sanitize_metric_name,
)

HEADS = 3
EPOCH_KEYS = ["epoch", "val_loss", "time_total_s"] + [f"posterior/head_{h:02d}" for h in range(3)]
STEP_KEYS = [f"step_posterior/head_{h:02d}" for h in range(HEADS)]


def posteriors(x: float, t: int) -> list[float]:
    """A deterministic posterior over the heads (sums to 1) for value ``x`` at time ``t``."""
    weights = [math.exp(math.sin(x * (h + 1) + 0.1 * t)) for h in range(HEADS)]
    return [w / sum(weights) for w in weights]


def epoch_metrics(config: dict[str, Any], epoch: int) -> dict[str, Any]:
    """What the test trainable reports at ``epoch`` (per-step posteriors in step_metrics)."""
    x, epochs, steps = config["x"], config["epochs"], config["steps"]
    step_range = range((epoch - 1) * steps + 1, epoch * steps + 1)
    out: dict[str, Any] = {
        "epoch": epoch, "val_loss": x / epoch, "status": "done" if epoch == epochs else "running",
        "step_metrics": {k: [[s, posteriors(x, s)[h]] for s in step_range]
                         for h, k in enumerate(STEP_KEYS)},
    }
    out.update({f"posterior/head_{h:02d}": p for h, p in enumerate(posteriors(x, 1000 + epoch))})
    return out


def reporting_trainable(config: dict[str, Any]) -> None:
    """Reports ``epochs`` epochs with checkpoints; can raise or crash once (``crash_marker``).

    Restored from a checkpoint it re-reports the checkpoint's epoch, as a trainable that
    replays its last record does.
    """
    from ray import tune

    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = int(Path(d, "epoch").read_text())
    marker = config.get("crash_marker")
    for epoch in range(start, config["epochs"] + 1):
        if config.get("fail_x") == config["x"] and epoch == 2:
            raise RuntimeError(f"boom at epoch {epoch}")
        if marker and epoch == 3 and not Path(marker).exists():
            Path(marker).write_text("crashed")
            raise RuntimeError("crash once")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "epoch").write_text(str(epoch))
            tune.report(epoch_metrics(config, epoch),
                        checkpoint=tune.Checkpoint.from_directory(d))


def run_tuner(uri: str, storage: Path, param_space: dict[str, Any], *, name: str,
              scheduler: Any = None, max_failures: int = 0,
              **callback_kwargs: Any) -> dict[str, Any]:
    """pipeline run -> stage run -> a Tuner over the test trainable; returns what tests check."""
    from ray import tune

    from alrao_tune.tracking.callback import MLflowTrialCallback

    experiment_id = prepare_store(uri, "tracking-test")
    tree = RunTree(uri, experiment_id)
    pipeline = tree.start("pipeline", params={"space": {"name": name}})
    stage = tree.start("stage1", parent_run_id=pipeline)
    callback = MLflowTrialCallback(tree, stage, **callback_kwargs)
    tuner = tune.Tuner(
        tune.with_resources(reporting_trainable, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True, scheduler=scheduler,
                                    metric="val_loss", mode="min"),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage.resolve()), callbacks=[callback], verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    tree.end(stage)
    tree.end(pipeline)
    return {"tree": tree, "pipeline": pipeline, "stage": stage, "callback": callback,
            "grid": grid, "wall_s": wall}


def children(tree: RunTree, parent: str) -> list[Any]:
    """The runs whose ``mlflow.parentRunId`` is ``parent``."""
    runs = tree.client.search_runs([tree.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def history(tree: RunTree, run_id: str, key: str) -> list[tuple[int, float]]:
    """The (step, value) entries of one metric, sorted by step."""
    return sorted((m.step, m.value) for m in tree.client.get_metric_history(run_id, key))


def assert_exact_history(tree: RunTree, run: Any, epochs: int, steps: int) -> None:
    """Every reported value arrived exactly once, at its step, with its value."""
    run_id, x = run.info.run_id, float(run.data.params["x"])
    for key in EPOCH_KEYS:
        # one entry per epoch, at steps 1..epochs
        assert [s for s, _ in history(tree, run_id, key)] == list(range(1, epochs + 1)), key
    for h, key in enumerate(STEP_KEYS):
        # one entry per optimizer step with exactly the reported value
        expected = [(s, posteriors(x, s)[h]) for s in range(1, epochs * steps + 1)]
        assert history(tree, run_id, key) == expected, key
    for prefix, n in (("posterior", epochs), ("step_posterior", epochs * steps)):
        heads = [history(tree, run_id, f"{prefix}/head_{h:02d}") for h in range(HEADS)]
        sums = [sum(v for _, v in entries) for entries in zip(*heads)]
        # the posterior sums to 1 at every logged step
        assert len(sums) == n and all(abs(t - 1) < 1e-12 for t in sums)


@pytest.fixture(scope="module")
def grid_run(ray_local: None, tmp_path_factory: pytest.TempPathFactory,
             mlflow_db_template: Path) -> dict[str, Any]:
    """Four trials (a grid over ``x``), four epochs of four steps; ``x == 4`` raises."""
    tmp = tmp_path_factory.mktemp("grid")
    shutil.copyfile(mlflow_db_template, tmp / "mlflow.db")
    space = {"x": {"grid_search": [1.0, 2.0, 3.0, 4.0]}, "epochs": 4, "steps": 4,
             "fail_x": 4.0, "model": {"width": 8, "act": "relu"}}
    return run_tuner(f"sqlite:///{tmp}/mlflow.db", tmp / "ray", space, name="grid")


def trial_runs(grid_run: dict[str, Any]) -> dict[str, Any]:
    """The grid's trial runs by their ``x`` param."""
    return {r.data.params["x"]: r for r in children(grid_run["tree"], grid_run["stage"])}


@pytest.mark.slow
def test_run_hierarchy_pipeline_stage_trials(grid_run: dict[str, Any]) -> None:
    tree = grid_run["tree"]
    runs = tree.client.search_runs([tree.experiment_id], max_results=1000)
    stages = children(tree, grid_run["pipeline"])
    trials = children(tree, grid_run["stage"])
    # exactly pipeline -> stage -> 4 trials; nothing left RUNNING
    assert len(runs) == 6 and [r.info.run_id for r in stages] == [grid_run["stage"]]
    assert len(trials) == 4
    assert sorted(r.info.status for r in runs) == ["FAILED"] + ["FINISHED"] * 5
    # the public mapping trial id -> run id matches the trial-id tags and Tune's trials
    run_ids = grid_run["callback"].run_ids
    assert {r.data.tags[TRIAL_ID_TAG]: r.info.run_id for r in trials} == run_ids
    assert {res.metrics["trial_id"] for res in grid_run["grid"]} == set(run_ids)


@pytest.mark.slow
def test_params_are_the_flattened_config(grid_run: dict[str, Any]) -> None:
    runs = trial_runs(grid_run)
    assert sorted(runs) == ["1.0", "2.0", "3.0", "4.0"]
    for x, run in runs.items():
        assert run.data.params == {"x": x, "epochs": "4", "steps": "4", "fail_x": "4.0",
                                   "model.width": "8", "model.act": "relu"}


@pytest.mark.slow
def test_every_value_arrives_exactly_once(grid_run: dict[str, Any]) -> None:
    tree = grid_run["tree"]
    for x, run in trial_runs(grid_run).items():
        if x == "4.0":
            continue
        assert run.info.status == "FINISHED"
        assert_exact_history(tree, run, epochs=4, steps=4)
        # Tune's own keys are not logged; time_total_s is; string fields became tags
        assert not {"training_iteration", "pid", "timestamp", "done"} & set(run.data.metrics)
        assert run.data.tags["status"] == "done"
        assert run.data.tags[STOPPED_TAG] == "false"
        assert run.data.tags[LAST_STEP_TAG] == "4"


@pytest.mark.slow
def test_failing_trial_run_is_failed_with_error(grid_run: dict[str, Any]) -> None:
    tree = grid_run["tree"]
    failed = trial_runs(grid_run)["4.0"]
    # the raising trial: FAILED, the exception in a tag, the full trace in error.txt
    assert failed.info.status == "FAILED"
    assert "RuntimeError: boom at epoch 2" in failed.data.tags[ERROR_TAG]
    artifacts = [a.path for a in tree.client.list_artifacts(failed.info.run_id)]
    assert artifacts == ["error.txt"]
    # what it reported before failing is there (epoch 1)
    assert history(tree, failed.info.run_id, "val_loss") == [(1, 4.0)]
    assert failed.data.tags["status"] == "running"


@pytest.mark.slow
def test_asha_stopped_trials_are_finished(ray_local: None, tmp_path: Path,
                                          mlflow_uri: str) -> None:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(grace_period=1, max_t=5, reduction_factor=2)
    space = {"x": {"grid_search": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}, "epochs": 5, "steps": 2}
    out = run_tuner(mlflow_uri, tmp_path / "ray", space, name="asha", scheduler=asha)
    tree = out["tree"]
    runs = children(tree, out["stage"])
    epochs = {r.info.run_id: len(history(tree, r.info.run_id, "val_loss")) for r in runs}
    stopped = [r for r in runs if epochs[r.info.run_id] < 5]
    # ASHA stopped some trials; no run is left RUNNING, every trial run is FINISHED
    assert len(runs) == 6 and stopped
    assert {r.info.status for r in runs} == {"FINISHED"}
    # stopped ones are tagged as such and hold exactly the epochs they reported
    for run in runs:
        expected = "true" if epochs[run.info.run_id] < 5 else "false"
        assert run.data.tags[STOPPED_TAG] == expected
        assert_exact_history(tree, run, epochs=epochs[run.info.run_id], steps=2)


@pytest.mark.slow
def test_concurrent_trials_many_step_metrics(ray_local: None, tmp_path: Path,
                                             mlflow_uri: str) -> None:
    # 2 trials x 5 epochs x 200 steps x 3 step metrics = 6,000 step values
    space = {"x": {"grid_search": [1.0, 2.0]}, "epochs": 5, "steps": 200}
    out = run_tuner(mlflow_uri, tmp_path / "ray", space, name="many")
    tree, stats = out["tree"], out["callback"].stats
    runs = children(tree, out["stage"])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert_exact_history(tree, run, epochs=5, steps=200)
    # 6,000 step values + 2 trials x 5 epochs x 6 epoch-level keys
    assert stats["values"] == 6000 + 2 * 5 * len(EPOCH_KEYS)
    print(f"\nlogging: {stats['values']} values, {stats['hook_s']:.3f} s in Tune hooks, "
          f"{stats['write_s']:.3f} s writing ({stats['calls']} calls), "
          f"fit wall {out['wall_s']:.1f} s")
    assert stats["errors"] == 0


@pytest.mark.slow
def test_retried_trial_reuses_its_run_and_skips_replayed_results(
        ray_local: None, tmp_path: Path, mlflow_uri: str) -> None:
    marker = tmp_path / "crashed"
    space = {"x": 1.5, "epochs": 5, "steps": 3, "crash_marker": str(marker)}
    out = run_tuner(mlflow_uri, tmp_path / "ray", space, name="retry", max_failures=1)
    tree = out["tree"]
    runs = children(tree, out["stage"])
    # the trial crashed once after epoch 2, was restored from its checkpoint and finished
    assert marker.exists()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # the re-reported epoch 2 was skipped: every value is there exactly once
    assert_exact_history(tree, runs[0], epochs=5, steps=3)
    assert runs[0].data.tags[REPLAYED_TAG] == "1"
    assert runs[0].data.tags["alrao_tune.failures"] == "1"


@pytest.mark.slow
def test_resumed_experiment_continues_the_same_run(ray_local: None, tmp_path: Path,
                                                   mlflow_uri: str) -> None:
    from ray import tune

    marker = tmp_path / "crashed"
    space = {"x": 2.5, "epochs": 4, "steps": 3, "crash_marker": str(marker)}
    out = run_tuner(mlflow_uri, tmp_path / "ray", space, name="resume")
    tree = out["tree"]
    [first] = children(tree, out["stage"])
    # no retries: the trial errored at epoch 3, its run FAILED after two epochs
    assert first.info.status == "FAILED" and first.data.tags[LAST_STEP_TAG] == "2"
    # a resumed experiment (the callback comes back from Tune's pickle and state)
    trainable = tune.with_resources(reporting_trainable, {"cpu": 1})
    tune.Tuner.restore(str(tmp_path / "ray" / "resume"), trainable, resume_errored=True).fit()
    [run] = children(tree, out["stage"])
    # the same run went on and finished; the replayed epoch 2 was not logged twice
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert_exact_history(tree, run, epochs=4, steps=3)
    assert run.data.tags[REPLAYED_TAG] == "1"
    assert ERROR_TAG not in run.data.tags
    assert "crash once" in run.data.tags["alrao_tune.last_error"]


def test_prepare_store_creates_db_and_experiment(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/sub/mlflow.db"
    experiment_id = prepare_store(uri, "my exp/1")
    # the database exists and the artifacts go under its folder
    assert (tmp_path / "sub" / "mlflow.db").is_file()
    location = RunTree(uri, experiment_id).client.get_experiment(experiment_id).artifact_location
    assert location.removeprefix("file://") == str(tmp_path / "sub" / "mlartifacts" / "my-exp-1")
    # a second call returns the same experiment
    assert prepare_store(uri, "my exp/1") == experiment_id


def test_prepare_store_unreachable_server_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(TrackingError, match="cannot reach MLflow tracking server at http"):
        prepare_store("http://127.0.0.1:9", "x")
    assert time.perf_counter() - start < 10


def test_run_tree_params_tags_find_and_artifacts(mlflow_uri: str) -> None:
    tree = RunTree(mlflow_uri, prepare_store(mlflow_uri, "tree"))
    parent = tree.start("parent")
    child = tree.start("child", parent_run_id=parent,
                       params={"a": {"b": {"c": 1}}, "long": "x" * 7000},
                       tags={"k": "it's"})
    tree.log_metrics(child, {"m": 1.5, "bad[name]": 2.0, "nan": float("nan")}, step=3)
    tree.log_dict(child, {"a": 1}, "cfg.json")
    run = tree.client.get_run(child)
    # nested params flattened, long values clipped to MLflow's 6,000-character limit
    assert run.data.params["a.b.c"] == "1" and len(run.data.params["long"]) == 6000
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["bad_name_"] == 2.0 and math.isnan(run.data.metrics["nan"])
    # find_run locates a run by tag under its parent, also with a quote in the value
    assert tree.find_run(parent_run_id=parent, tag_key="k", tag_value="it's") == child
    assert tree.find_run(parent_run_id=parent, tag_key="k", tag_value="other") is None
    tree.end(child, "KILLED")
    assert tree.reopen(child)["k"] == "it's"
    assert tree.client.get_run(child).info.status == "RUNNING"
    with pytest.raises(ValueError, match="status must be one of"):
        tree.end(child, "DONE")


def test_flatten() -> None:
    # nested mappings joined with ".", leaves (lists, empty dicts) kept as they are
    assert flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": {}, "f": "x"}) == {
        "a.b.c": 1, "a.d": [1, 2], "e": {}, "f": "x"}
    assert flatten({"a": {"b": 1}}, "p", sep="/") == {"p/a/b": 1}


@pytest.mark.parametrize(("name", "expected"), [
    ("posterior/head_03", "posterior/head_03"),
    ("val loss:1", "val loss:1"),
    ("a[0]", "a_0_"),
    ("f(x)=y@z", "f_x__y_z"),
    ("a..b", "a_b"),
    ("a//b", "a/b"),
    ("/lead/trail/", "lead/trail"),
    ("a/./b", "a/_/b"),
    ("", "_"),
    ("x" * 300, "x" * 250),
])
def test_sanitize_metric_name(name: str, expected: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    assert sanitize_metric_name(name) == expected
    # MLflow accepts the result
    _validate_metric_name(sanitize_metric_name(name))
