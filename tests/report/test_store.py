"""The dashboard's tables, read from a real MLflow store filled by a real tiny screening."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from alrao_tune import schema, tracking
from alrao_tune.report import compare as report_compare
from alrao_tune.report import store as rm
from alrao_tune.report import store_compare as rc
from tests.tune.test_screen import TINY

SPACE = {**TINY, "name": "dash"}
FAILED_EXPERIMENT = "dash-failed"


@dataclass
class Store:
    """A store with one real screening, one compare run and an experiment that failed."""

    uri: str
    experiment_id: str
    failed_experiment_id: str
    pipeline_id: str
    compare_id: str
    results: dict
    compare: dict
    compare_trials: pd.DataFrame


_STORES: dict[str, Store] = {}


def dashboard_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Builds the store once per test session (shared with tests/test_dashboard.py)."""
    if "store" not in _STORES:
        from alrao_tune.cli import main

        tmp = tmp_path_factory.mktemp("dashboard-store")
        uri = f"sqlite:///{tmp}/mlflow.db"
        (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
        code = main(["screen", str(tmp / "space.yaml"), "--tracking-uri", uri, "--storage",
                     str(tmp / "runs"), "--output", str(tmp / "out")])
        assert code == 0
        results = json.loads((tmp / "out" / "results.json").read_text())
        compare_id, compare, trials = _log_compare(uri, results["experiment_id"],
                                                   tmp / "space.yaml")
        _STORES["store"] = Store(uri, results["experiment_id"], _log_failed(uri),
                                 results["run_ids"]["pipeline"], compare_id, results, compare,
                                 trials)
    return _STORES["store"]


def compare_trials_frame() -> pd.DataFrame:
    """A compare trials table: an SGD grid of 3 rates per architecture (lr 1 diverges on
    mlp-4), Alrao and Adam."""
    rows = []
    sgd = {"mlp-4": (0.9, 0.5, math.inf), "mlp-16": (0.8, 0.3, 0.35),
           "mlp-16x16": (0.85, 0.4, 0.2)}
    alrao = {"mlp-4": 0.45, "mlp-16": 0.31, "mlp-16x16": 0.33}
    for i, (arch, losses) in enumerate(sgd.items()):
        common = {"stage": "compare", "arch": arch, "seed": 0, "n_params": 10 * (i + 1),
                  "epochs": 3, "time_total_s": 1.0, "momentum": 0.0, "weight_decay": 0.0,
                  "best_best_head_val_loss": math.nan, "lr_eff": math.nan, "error": ""}
        for lr, loss in zip((0.01, 0.1, 1.0), losses):
            rows.append({**common, "proxy": "sgd", "method": "sgd", "lr": lr,
                         "status": "diverged" if math.isinf(loss) else "completed",
                         "best_val_loss": loss, "best_val_acc": 1.0 - loss / 2,
                         "test_acc": 1.0 - loss / 2})
        rows.append({**common, "proxy": "alrao", "method": "alrao", "lr": math.nan,
                     "status": "completed", "best_val_loss": alrao[arch],
                     "best_best_head_val_loss": alrao[arch] - 0.01, "best_val_acc": 0.8,
                     "test_acc": 0.8, "lr_eff": 0.05 * (i + 1)})
        rows.append({**common, "proxy": "adam", "method": "adam", "lr": 1e-3,
                     "status": "completed", "best_val_loss": 0.6 - 0.1 * i,
                     "best_val_acc": 0.7, "test_acc": 0.7})
    return pd.DataFrame(rows).reindex(columns=list(rm.TRIAL_COLUMNS))


def _log_compare(uri: str, experiment_id: str, space_path: Path) -> tuple[str, dict,
                                                                          pd.DataFrame]:
    """A compare run written by compare's own reporting code from the table above (a real
    `alrao-tune compare` adds a minute; tests/tune/test_compare.py runs one)."""
    from alrao_tune.space import load_space
    from alrao_tune.tune.compare import CompareResult, _log, build_reports

    space = load_space(space_path)
    tree = tracking.RunTree(uri, experiment_id)
    parent = tree.start(f"compare {space.name}", tags={rm.KIND_TAG: "compare"})
    trials = compare_trials_frame()
    curves = report_compare.curves_data(
        [{"arch": "mlp-4", "proxy": "sgd_m0", "lr": 0.1, "epoch": e, "val_loss": v}
         for e, v in ((1, 0.9), (2, 0.5))]
        + [{"arch": "mlp-4", "proxy": "sgd_m0", "lr": 1.0, "epoch": 1, "val_loss": math.inf},
           {"arch": "mlp-4", "proxy": "alrao", "lr": math.nan, "epoch": 1, "val_loss": 0.7},
           {"arch": "mlp-16", "proxy": "alrao", "lr": math.nan, "epoch": 1, "val_loss": 0.6}])
    result = CompareResult(space.name, trials, build_reports(trials, space), {"compare": parent},
                           curves=curves)
    _log(tree, parent, result)
    tree.end(parent)
    return parent, json.loads(json.dumps(result.to_json())), trials


def _log_failed(uri: str) -> str:
    """An experiment whose only screening failed in every trial, logged in the layout the
    screening writes (pipeline -> stage1 -> FAILED trial runs with alrao_tune.error)."""
    exp = tracking.prepare_store(uri, FAILED_EXPERIMENT)
    tree = tracking.RunTree(uri, exp)
    pipe = tree.start(f"screen {FAILED_EXPERIMENT}", params={"stage1": {"metric": "val_loss"}},
                      tags={rm.KIND_TAG: "pipeline"})
    stage1 = tree.start("stage1 (alrao)", parent_run_id=pipe, tags={rm.KIND_TAG: "stage1"})
    for i, arch in enumerate(("mlp-4", "mlp-16")):
        run = tree.start(f"{arch} seed=0", parent_run_id=stage1, params={"trial": {
            "arch_name": arch, "stage": "stage1", "train": {"method": "alrao", "seed": 0}}},
            tags={schema.TRIAL_ID_TAG: f"t{i}", schema.ERROR_TAG: "RuntimeError: boom"})
        tree.end(run, "FAILED")
    tree.end(stage1, "FAILED")
    tree.end(pipe, "FAILED")
    return exp


@pytest.fixture(scope="module")
def store(ray_local, tmp_path_factory) -> Store:
    return dashboard_store(tmp_path_factory)


@pytest.fixture(scope="module")
def client(store):
    return rm.connect(store.uri)


# ------------------------------------------------------------------------ fast, no store
def test_trial_columns_match_the_runner():
    from alrao_tune.tune.runner import TRIAL_COLUMNS

    assert rm.TRIAL_COLUMNS == TRIAL_COLUMNS


def test_head_rates_match_the_heads_module():
    from alrao_tune.alrao.heads import head_learning_rates

    metrics = {f"posterior/head_{k:02d}": 0.2 for k in range(5)}
    params = {"trial.train.lr_min": "1e-05", "trial.train.lr_max": "10.0"}
    expected = head_learning_rates(5, 1e-5, 10.0).tolist()
    assert rm.head_rates(params, metrics) == pytest.approx(expected, rel=1e-6)
    # the interval the run really used (an LR range test) wins over the configured one
    used = rm.head_rates(params, {**metrics, "run_lr_min": 1e-3, "run_lr_max": 1e-1})
    assert used == pytest.approx([1e-3, 10**-2.5, 1e-2, 10**-1.5, 1e-1])
    # no heads: not an Alrao run
    assert rm.head_rates(params, {"val_loss": 1.0}) == []


def test_effective_lr_is_the_posterior_weighted_geometric_mean():
    series = pd.DataFrame({"step": [1, 1, 2, 2], "head": [0, 1, 0, 1],
                           "lr": [1e-3, 1e-1, 1e-3, 1e-1], "posterior": [0.5, 0.5, 0.0, 1.0]})
    out = rm.effective_lr(series)
    assert list(out["step"]) == [1, 2]
    assert out["lr_eff"].tolist() == pytest.approx([1e-2, 1e-1], rel=1e-12)


def test_run_url_needs_a_ui_address():
    assert rm.run_url("http://127.0.0.1:5055/", "3", "abc") == \
        "http://127.0.0.1:5055/#/experiments/3/runs/abc"
    assert rm.run_url("", "3", "abc") is None


def test_store_problems_are_clear_errors(tmp_path, mlflow_uri):
    # a SQLite file that does not exist is not created
    with pytest.raises(rm.EmptyStoreError, match="no MLflow store at"):
        rm.connect(f"sqlite:///{tmp_path}/missing/mlflow.db")
    assert not (tmp_path / "missing").exists()
    # nothing listens on port 9
    with pytest.raises(rm.StoreUnreachableError, match="cannot reach MLflow"):
        rm.connect("http://127.0.0.1:9")
    # a migrated, empty store
    with pytest.raises(rm.EmptyStoreError, match="holds no screening yet"):
        rm.list_experiments(rm.connect(mlflow_uri))


# ------------------------------------------------------------------ on the real store
@pytest.mark.slow
def test_experiments_and_runs_are_listed(store, client):
    exps = rm.list_experiments(client)
    assert exps.to_dict("records") == [
        {"experiment_id": store.experiment_id, "name": "dash", "pipelines": 1, "compares": 1},
        {"experiment_id": store.failed_experiment_id, "name": FAILED_EXPERIMENT,
         "pipelines": 1, "compares": 0}]
    pipes = rm.list_runs(client, store.experiment_id)
    assert list(pipes["run_id"]) == [store.pipeline_id]
    assert list(pipes["status"]) == ["FINISHED"]
    assert list(rm.list_runs(client, store.experiment_id, "compare")["run_id"]) == \
        [store.compare_id]


@pytest.mark.slow
def test_funnel_is_the_leaderboard_with_stage2_and_status(store, client):
    data = rm.load_pipeline(client, store.pipeline_id)
    assert data.source == "results.json"
    table = rm.funnel(data)
    board = pd.DataFrame(store.results["leaderboard"])
    # every leaderboard value, exactly, in the leaderboard's order
    assert table["arch"].tolist() == board["arch"].tolist()
    for col in ("rank", "n_params", "alrao_score", "alrao_rank", "lr_eff", "best_lr",
                "val_loss", "val_acc", "test_loss", "test_acc", "trial_seconds"):
        assert table[col].astype(float).tolist() == pytest.approx(
            board[col].astype(float).tolist(), rel=0, abs=0, nan_ok=True), col
    # the top-k went on to stage 2; nothing failed in this screening
    chosen = {r["arch"] for r in store.results["stage2"]}
    assert dict(zip(table["arch"], table["stage2"])) == {a: a in chosen for a in table["arch"]}
    assert set(table["status"]) == {"ok"}


@pytest.mark.slow
def test_funnel_rebuilt_from_the_runs_equals_results_json(store, client):
    fast = rm.funnel(rm.load_pipeline(client, store.pipeline_id))
    slow_data = rm.load_pipeline(client, store.pipeline_id, prefer_artifact=False)
    assert slow_data.source == "runs"
    pd.testing.assert_frame_equal(rm.funnel(slow_data), fast, check_dtype=False)


@pytest.mark.slow
def test_trial_curves_and_posterior(store, client):
    data = rm.load_pipeline(client, store.pipeline_id)
    choices = rm.trial_choices(data)
    expected_ids = {t["run_id"] for t in store.results["stage1_trials"]
                    + store.results["stage2_trials"]}
    assert set(choices["run_id"]) == expected_ids
    first = store.results["stage1_trials"][0]
    curves = rm.learning_curves(client, first["run_id"])
    assert curves["epoch"].tolist() == [1, 2, 3]
    # the running best logged at the end is the best of the curve
    assert curves["val_loss"].min() == pytest.approx(first["best_val_loss"], rel=1e-12)
    post = rm.posterior_series(client, first["run_id"])
    # one series per head, labelled with the head's rate; a distribution at every step
    assert sorted(set(post["label"])) == ["head 0 (lr 0.001)", "head 1 (lr 0.032)",
                                          "head 2 (lr 1)"]
    sums = post.groupby("step")["posterior"].sum()
    assert np.allclose(sums, 1.0, atol=1e-5)
    # the effective rate at the last step is the lr_eff the trainer logged last
    eff = rm.effective_lr(post)
    assert eff["lr_eff"].iloc[-1] == pytest.approx(curves["lr_eff"].iloc[-1], rel=1e-5)


@pytest.mark.slow
def test_lr_sensitivity_points_and_alrao_marks(store, client):
    points, marks = rm.lr_sensitivity(rm.load_pipeline(client, store.pipeline_id))
    trials = sorted(store.results["stage2_trials"], key=lambda t: (t["arch"], t["lr"]))
    assert points[["arch", "lr", "value"]].values.tolist() == \
        [[t["arch"], t["lr"], t["best_val_loss"]] for t in trials]
    lr_eff = {r["arch"]: r["lr_eff"] for r in store.results["stage1"]}
    assert dict(zip(marks["arch"], marks["alrao_lr_eff"])) == \
        {a: lr_eff[a] for a in marks["arch"]}


@pytest.mark.slow
def test_only_failed_runs_is_a_clear_error(store, client):
    run_id = rm.list_runs(client, store.failed_experiment_id)["run_id"][0]
    with pytest.raises(rm.NoResultsError, match="no stage-1 trial .* finished: RuntimeError"):
        rm.load_pipeline(client, run_id)


@pytest.mark.slow
def test_compare_views(store, client):
    data = rc.load_compare(client, store.compare_id)
    assert rc.compare_momenta(data) == ["0.0"]
    report = store.compare["by_momentum"]["0.0"]
    table1 = rc.compare_table(data, "0.0", "table1")
    assert table1.to_dict("records") == report["table1"]
    # proxy vs truth: Alrao's loss against the best non-diverged SGD loss of the grid
    scatter = rc.proxy_scatter(data, "0.0").set_index("arch")
    assert scatter["proxy"].to_dict() == {"mlp-16": 0.31, "mlp-16x16": 0.33, "mlp-4": 0.45}
    assert scatter["truth"].to_dict() == {"mlp-16": 0.3, "mlp-16x16": 0.2, "mlp-4": 0.5}
    assert scatter["finite"].all()
    fidelity = next(r for r in report["fidelity"] if r["proxy"] == "alrao")
    agree = rc.rank_agreement(data, "0.0")
    assert (agree["tau"], agree["rho"]) == (fidelity["tau_avg"], fidelity["rho_avg"])
    assert rc.compute_saved(data, "0.0") == report["pipeline"]
    # Figure 2 of one architecture, from the logged curves.csv (the diverged point dropped)
    assert rc.compare_curves(data, "0.0", "mlp-4").to_dict("list") == {
        "epoch": [1, 1, 2], "val_loss": [0.7, 0.9, 0.5],
        "run": ["Alrao", "SGD lr=0.1", "SGD lr=0.1"]}
    pipes = rc.compare_table(data, "0.0", "pipelines")
    assert pipes.to_dict("records") == report["pipelines"] and len(pipes) == 6
