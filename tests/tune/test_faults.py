"""Faults inside a screening: crashed, raising and diverging trials (injected through the
trainable), exact state after a retry, exactly-once metrics of concurrent trials, and a
Ctrl-C that leaves a resumable screening. (SIGKILL and --resume: ``test_reliability.py``.)

The fault-injection screening runs in this process on the session's ``ray_local``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tune.reliability_helpers import (
    Screening,
    checkpoints,
    fresh_store,
    history,
    mlflow_runs,
    run_here,
    stage_dir,
    tree_of,
    write_space,
)
from tests.tune.test_reliability import KILL

pytestmark = pytest.mark.slow

FAULTY = {
    "name": "faulty",
    "dataset": {"name": "blobs", "options": {"n_train": 300, "n_features": 6, "n_classes": 3}},
    "architectures": [
        {"name": "twin-a", "family": "mlp", "widths": [8]},
        {"name": "twin-b", "family": "mlp", "widths": [8]},  # the same model: crashes once
        {"name": "raiser", "family": "mlp", "widths": [4]},
        {"name": "nan", "family": "mlp", "widths": [4]},
    ],
    "training": {"epochs": 4, "batch_size": 32, "patience": None, "posterior_every": 1},
    "alrao": {"lr_min": 1e-3, "lr_max": 1.0, "n_heads": 3},
    "stage1": {"seeds": [0], "top_k": 2},
    "stage2": {"enabled": False},
    "resources": {"cpu": 1},
}
STEPS_PER_EPOCH = 10  # ceil(300 / 32)


@pytest.fixture(scope="module")
def faulty(ray_local, tmp_path_factory, mlflow_db_template):
    from alrao_tune.bench.faults import faulty_trainable
    from alrao_tune.tune.screen import screen

    tmp = tmp_path_factory.mktemp("faulty")
    marker = tmp / "crashed"
    # the faults come with the trainable (production code reads no fault setting)
    trainable = faulty_trainable(
        {"twin-b": f"crash_once:{marker}", "raiser": "raise", "nan": "nan"})
    uri = fresh_store(mlflow_db_template, tmp / "mlflow.db")
    screen(write_space(tmp, FAULTY), tracking_uri=uri, storage=tmp / "runs",
           output=tmp / "out", progress=None, trainable=trainable)  # raises on failure
    results = json.loads((tmp / "out" / "results.json").read_text())
    return {"tmp": tmp, "uri": uri, "marker": marker, "results": results}


def _by_arch(rows):
    return {r["arch"]: r for r in rows}


def test_crashed_worker_is_retried_in_the_same_run(faulty):
    assert faulty["marker"].exists()  # the worker did die once
    trials = _by_arch(faulty["results"]["stage1_trials"])
    assert trials["twin-b"]["status"] == "completed" and trials["twin-b"]["epochs"] == 4
    client, runs = mlflow_runs(faulty["uri"], "faulty")
    twin_b = [r for r in runs if r.info.run_name == "twin-b seed=0"]
    assert len(twin_b) == 1  # continued, not duplicated
    run = twin_b[0]
    assert run.info.status == "FINISHED" and run.data.tags["alrao_tune.failures"] == "1"
    twin_a = next(r for r in runs if r.info.run_name == "twin-a seed=0")
    for key in ("val_loss", "posterior/head_01"):
        assert history(client, run.info.run_id, key) == \
            history(client, twin_a.info.run_id, key)


def test_raising_trial_fails_in_mlflow_and_ranks_last(faulty):
    results = faulty["results"]
    trials, stage1 = _by_arch(results["stage1_trials"]), _by_arch(results["stage1"])
    assert trials["raiser"]["status"] == "error"
    assert "injected fault" in trials["raiser"]["error"]
    assert stage1["raiser"]["failed_runs"] == 1 and stage1["raiser"]["alrao_rank"] >= 3
    client, runs = mlflow_runs(faulty["uri"], "faulty")
    run = next(r for r in runs if r.info.run_name == "raiser seed=0")
    assert run.info.status == "FAILED"
    assert "injected fault" in run.data.tags["alrao_tune.error"]
    assert [s for s, _ in history(client, run.info.run_id, "val_loss")] == [1]
    pipeline = tree_of(runs)["pipeline"]
    assert pipeline.info.status == "FINISHED"  # the pipeline went on


def test_diverging_trial_is_a_result_ranked_last(faulty):
    trials = _by_arch(faulty["results"]["stage1_trials"])
    stage1 = _by_arch(faulty["results"]["stage1"])
    assert trials["nan"]["status"] == "diverged" and trials["nan"]["error"] in ("", None)
    assert stage1["nan"]["failed_runs"] == 1 and stage1["nan"]["alrao_rank"] >= 3
    assert {stage1["twin-a"]["alrao_rank"], stage1["twin-b"]["alrao_rank"]} == {1, 2}
    _, runs = mlflow_runs(faulty["uri"], "faulty")
    run = next(r for r in runs if r.info.run_name == "nan seed=0")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "diverged"


def test_retried_trial_ends_with_the_exact_state_of_an_uninterrupted_one(faulty):
    import torch

    from alrao_tune.tune.runner import experiment_trials
    from alrao_tune.tune.trainable import trial_config

    folder = stage_dir(faulty["tmp"] / "runs", "faulty", "stage1")
    final = {trial_config(t.config)["arch_name"]: Path(t.checkpoint.path) / "trainer.pt"
             for t in experiment_trials(folder)}
    a, b = (torch.load(final[n], weights_only=True) for n in ("twin-a", "twin-b"))

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    assert same(a["model"], b["model"])  # weights, heads and the switch's buffers
    assert any("posterior" in k or "switch" in k for k in a["model"])
    assert same(a["optimizer"], b["optimizer"])  # per-feature rates, momentum, step
    assert same(a["best_state"], b["best_state"])
    for key in ("shuffle_gen", "torch_rng"):
        assert same(a[key], b[key])
    for key in ("epoch", "global_step", "status", "best_epoch", "best_val", "bad_epochs"):
        assert a["loop"][key] == b["loop"][key]
    assert a["loop"]["global_step"] == 4 * STEPS_PER_EPOCH


def test_concurrent_trials_log_every_value_exactly_once(faulty):
    client, runs = mlflow_runs(faulty["uri"], "faulty")
    trials = [r for r in runs if "alrao_tune.trial_id" in r.data.tags]
    assert len(trials) == 4
    logged = 0
    for run in trials:
        epochs = len(history(client, run.info.run_id, "val_loss"))
        for key in run.data.metrics:
            steps = [s for s, _ in history(client, run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key)  # no duplicate
            logged += len(steps)
        # one switch posterior per training step (posterior_every: 1), none missing
        assert [s for s, _ in history(client, run.info.run_id, "posterior/head_00")] == \
            list(range(1, epochs * STEPS_PER_EPOCH + 1))
        assert [s for s, _ in history(client, run.info.run_id, "val_loss")] == \
            list(range(1, epochs + 1))
    # what the driver-side callback accepted is exactly what the store holds
    assert logged == faulty["results"]["timings"]["stage1_mlflow_values"]


def test_ctrl_c_leaves_a_resumable_screening(ray_local, tmp_path, mlflow_db_template):
    """SIGINT (Ctrl-C) to `alrao-tune screen`: exit 130 with a hint, the screening is
    recorded KILLED (not FINISHED with failed trials), and --resume (in this process: it
    is not interrupted) finishes it."""
    import signal

    # 4 trials, 2 at a time: the SIGINT after 2 checkpoints lands with most epochs to run
    epochs = 6
    space = write_space(tmp_path, {**KILL, "name": "ctrlc", "stage2": {"enabled": False},
                                   "training": {"epochs": epochs, "batch_size": 32,
                                                "patience": None}})
    uri = fresh_store(mlflow_db_template, tmp_path / "mlflow.db")
    storage = tmp_path / "runs"
    args = [str(space), "--tracking-uri", uri, "--storage", str(storage)]
    first = Screening(args, tmp_path / "first.log")
    first.wait_until(lambda: len(checkpoints(stage_dir(storage, "ctrlc", "stage1"))) >= 2,
                     what="2 stage-1 checkpoints")
    first.proc.send_signal(signal.SIGINT)
    assert first.wait(120) == 130, first.output[-3000:]
    assert "interrupted" in first.output and "--resume" in first.output
    state = json.loads((stage_dir(storage, "ctrlc", "stage1").parent / "pipeline.json")
                       .read_text())
    assert state["status"] == "KILLED"
    code = run_here([*args, "--resume"], tmp_path / "second.log")
    assert code == 0, (tmp_path / "second.log").read_text()[-3000:]
    _, runs = mlflow_runs(uri, "ctrlc")
    tree = tree_of(runs)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(tree["trials"]["stage1 (alrao)"]) == 4
    assert all(r.data.metrics["epoch"] == epochs for r in tree["trials"]["stage1 (alrao)"])
