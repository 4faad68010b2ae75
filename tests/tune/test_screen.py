"""End to end: `alrao-tune screen` on real Ray, real Optuna, a real MLflow SQLite store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from alrao_tune.cli import main

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "dataset": {"name": "blobs", "options": {"n_train": 300, "n_features": 6, "n_classes": 3}},
    "architectures": [
        {"name": "mlp-4", "family": "mlp", "widths": [4]},
        {"name": "mlp-16", "family": "mlp", "widths": [16]},
        {"name": "mlp-16x16", "family": "mlp", "widths": [16, 16]},
    ],
    "training": {"epochs": 3, "batch_size": 32, "patience": None},
    "alrao": {"lr_min": 1e-3, "lr_max": 1.0, "n_heads": 3},
    "stage1": {"seeds": [0], "top_k": 2},
    "stage2": {"lr": {"low": 1e-3, "high": 1.0}, "trials_per_arch": 2},
    "resources": {"cpu": 1},
}


def write_space(tmp_path: Path, space: dict | str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(space if isinstance(space, str) else yaml.safe_dump(space))
    return path


def runs_of(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = client.search_experiments()
    runs = [r for e in exps for r in client.search_runs([e.experiment_id], max_results=1000)]
    return client, runs


@pytest.fixture(scope="module")
def screened(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screen")
    uri = f"sqlite:///{tmp}/mlflow.db"
    space = write_space(tmp, TINY)
    # stage 2 searches within half a decade of each architecture's Alrao rate
    code = main(["screen", str(space), "--tracking-uri", uri, "--storage", str(tmp / "runs"),
                 "--output", str(tmp / "out"), "--json", "--set", "stage2.lr_window=0.5",
                 "--register-model", "tiny-winner"])
    assert code == 0
    return uri, tmp / "out", json.loads((tmp / "out" / "results.json").read_text())


def test_stage2_tunes_only_the_top_k(screened):
    _, _, results = screened
    top = [r["arch"] for r in results["stage1"] if r["alrao_rank"] <= 2]
    assert sorted({t["arch"] for t in results["stage2_trials"]}) == sorted(top)
    # every top-k architecture got exactly trials_per_arch Optuna trials
    assert len(results["stage2_trials"]) == 2 * 2
    # ... at rates within stage2.lr_window decades of its Alrao rate (clipped to lr.low..high)
    lr_eff = {r["arch"]: r["lr_eff"] for r in results["stage1"]}
    for t in results["stage2_trials"]:
        centre = min(max(lr_eff[t["arch"]], 1e-3), 1.0)
        assert max(1e-3, centre / 10**0.5) * (1 - 1e-9) <= t["lr"] \
            <= min(1.0, centre * 10**0.5) * (1 + 1e-9)


def test_mlflow_holds_pipeline_stage_trial_hierarchy(screened):
    uri, _, results = screened
    client, runs = runs_of(uri)
    by_id = {r.info.run_id: r for r in runs}
    parents = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    pipeline = [r for r in runs if parents[r.info.run_id] is None]
    assert len(pipeline) == 1
    stages_ = [r for r in runs if parents[r.info.run_id] == pipeline[0].info.run_id]
    assert sorted(r.info.run_name for r in stages_) == ["stage1 (alrao)", "stage2 (optuna)"]
    trials = [r for r in runs if parents[r.info.run_id] in {s.info.run_id for s in stages_}]
    assert len(trials) == 3 + 4
    # nothing is left RUNNING
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert results["run_ids"]["pipeline"] == pipeline[0].info.run_id
    stage1 = next(s for s in stages_ if s.info.run_name.startswith("stage1"))
    for trial in (t for t in trials if parents[t.info.run_id] == stage1.info.run_id):
        history = {k: client.get_metric_history(trial.info.run_id, f"posterior/head_{k:02d}")
                   for k in range(3)}
        assert len(history[0]) >= 3  # at least one posterior per epoch
        for i in range(len(history[0])):
            # the switch posterior sums to 1 at every logged step
            assert sum(history[k][i].value for k in range(3)) == pytest.approx(1, abs=1e-5)
            assert len({history[k][i].step for k in range(3)}) == 1
    assert by_id  # silence unused warnings


def test_leaderboard_ranks_by_the_documented_score(screened):
    uri, out, results = screened
    stage1 = results["stage1"]
    scores = [r["alrao_score"] for r in stage1]
    assert scores == sorted(scores)  # val_loss: lower is better, rank 1 first
    assert [r["alrao_rank"] for r in stage1] == [1, 2, 3]
    client, _ = runs_of(uri)
    for trial in results["stage1_trials"]:
        history = client.get_metric_history(trial["run_id"], "val_loss")
        # the score in results.json is the best validation loss logged in MLflow
        assert trial["best_val_loss"] == pytest.approx(min(m.value for m in history))
    board = (out / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("rank,arch")
    assert len(board) == 1 + 3
    first = results["leaderboard"][0]
    assert first["stage2_rank"] == 1 and not math.isnan(first["best_lr"])


def test_the_winner_is_an_mlflow_model_that_reproduces_the_leaderboard(screened):
    import mlflow
    import torch

    import alrao_tune
    from alrao_tune.data import load_dataset

    uri, _, results = screened
    winner = results["leaderboard"][0]
    options = TINY["dataset"]["options"]
    data = load_dataset("blobs", seed=0, **options)
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pytorch.load_model(results["model_uri"])
    finally:
        mlflow.set_tracking_uri("")
    with torch.no_grad():
        acc = float((model(data.x_test).argmax(-1) == data.y_test).double().mean())
    # the logged weights are those of the best validation epoch: the leaderboard's test acc
    assert acc == pytest.approx(winner["test_acc"], abs=1e-9)
    # load_best finds the same model by experiment name and by registered name
    by_name = alrao_tune.load_best("tiny", tracking_uri=uri)
    registered = alrao_tune.load_best(registered_name="tiny-winner", tracking_uri=uri)
    for other in (by_name, registered):
        for a, b in zip(model.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b)
    # --register-model created version 1, pointing at the pipeline run
    client, _ = runs_of(uri)
    versions = client.search_model_versions("name='tiny-winner'")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, results["run_ids"]["pipeline"])]
    # the winner's metrics are on the pipeline run
    metrics = client.get_run(results["run_ids"]["pipeline"]).data.metrics
    assert metrics["winner/test_acc"] == pytest.approx(winner["test_acc"])


def test_optuna_storage_holds_one_study_per_top_k_architecture(screened):
    import optuna
    from optuna.trial import TrialState

    uri, _, results = screened
    # the default: an SQLite file of its own beside the MLflow store
    assert results["optuna_storage"] == uri.replace("mlflow.db", "optuna.db")
    storage = results["optuna_storage"]
    top = sorted(r["arch"] for r in results["stage1"] if r["alrao_rank"] <= 2)
    assert sorted(results["optuna_studies"]) == top
    assert sorted(optuna.get_all_study_names(storage)) == \
        sorted(results["optuna_studies"].values())
    for arch, name in results["optuna_studies"].items():
        assert name == f"tiny/{results['run_ids']['pipeline']}/{arch}"
        study = optuna.load_study(study_name=name, storage=storage)
        # every trial ended; the COMPLETE ones are the leaderboard's trials of the arch
        assert {t.state for t in study.trials} == {TrialState.COMPLETE}
        got = sorted((t.params["lr"], t.value) for t in study.trials)
        want = sorted((t["lr"], t["best_val_loss"]) for t in results["stage2_trials"]
                      if t["arch"] == arch)
        assert [v for pair in got for v in pair] == \
            pytest.approx([v for pair in want for v in pair], rel=1e-12)


BAD_SPACES = [
    ("stage1: [unclosed", "line"),
    ({**TINY, "stage3": {}}, "stage3"),
    ({**TINY, "alrao": {"lr_min": 1.0, "lr_max": 0.1}}, "lr_min"),
    ({**TINY, "stage1": {"top_k": 7}}, "top_k"),
    ({**TINY, "dataset": {"name": "cifar10", "options": {"path": "/nonexistent/cifar"}}},
     "/nonexistent/cifar"),
    ({**TINY, "architectures": [{"family": "transformr"}]}, "transformr"),
    ({**TINY, "stage1": {"topk": 2}}, "did you mean 'top_k'"),
    ({**TINY, "training": {"epochs": "many"}}, "training.epochs = 'many'"),
    ({**TINY, "alrao": {"lr_min": 0.0, "lr_max": 1.0}}, "alrao.lr_min = 0.0"),
    ({**TINY, "stage1": {"top_k": 0}}, "stage1.top_k = 0"),
    ({**TINY, "architectures": [{"builder": "no_such_module:build"}], "stage1": {"top_k": 1}},
     "no_such_module"),
]


@pytest.mark.parametrize("space,match", BAD_SPACES)
def test_bad_space_exits_2_and_writes_nothing(tmp_path, space, match, capsys):
    path = write_space(tmp_path, space)
    db = tmp_path / "mlflow.db"
    code = main(["screen", str(path), "--tracking-uri", f"sqlite:///{db}",
                 "--storage", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("alrao-tune: error:") and match in err
    # nothing half-written: no MLflow store, no Tune storage
    assert not db.exists() and not (tmp_path / "runs").exists()


def test_unreachable_tracking_server_exits_2_before_training(tmp_path, capsys):
    path = write_space(tmp_path, TINY)
    code = main(["screen", str(path), "--tracking-uri", "http://127.0.0.1:9",
                 "--storage", str(tmp_path / "runs")])
    assert code == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("url,match", [("nosuchdb://host/db", "nosuchdb"),
                                       ("not a url", "not a url")])
def test_bad_optuna_storage_exits_2_and_writes_nothing(tmp_path, url, match, capsys):
    path = write_space(tmp_path, TINY)
    db = tmp_path / "mlflow.db"
    code = main(["screen", str(path), "--tracking-uri", f"sqlite:///{db}",
                 "--storage", str(tmp_path / "runs"), "--set", f"stage2.storage={url}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("alrao-tune: error: stage2.storage") and match in err
    assert "memory" in err  # the fix is named
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
