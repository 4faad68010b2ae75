"""A tiny `alrao-tune compare` with every screening strategy and every learning-rate-free
proxy, on real Ray, Optuna and MLflow: tables, compare.json's `strategies`, the runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from alrao_tune.cli import main
from alrao_tune.schema import LR_FREE_METHODS
from alrao_tune.tune.samplers import bracket_next
from tests.tune.reliability_helpers import fresh_store
from tests.tune.test_screen import TINY, runs_of

pytestmark = pytest.mark.slow

STRATEGIES = ["two_stage", "two_stage_adam", "asha", "asha_tpe", "random"]
METHODS = ["bracket+asha", "tpe:1"]  # stage-2 methods, stage2.trials_per_arch (2) each
SPACE = {
    **TINY,
    "name": "tinystrat",
    "architectures": TINY["architectures"][:2],
    "training": {"epochs": 3, "batch_size": 64, "patience": None},
    "stage1": {"top_k": 1},
    "stage2": {"lr": {"low": 1e-2, "high": 1.0}, "trials_per_arch": 2},
    "compare": {"lr_grid": [0.1, 1.0], "seeds": 1, "alrao_auto_range": False,
                "lr_find": False, "adam": True, "strategies": STRATEGIES, "repeats": 1,
                "asha": {"grace_period": 1, "reduction_factor": 2},
                "stage2_methods": METHODS},
}


@pytest.fixture(scope="module")
def compared(ray_local, tmp_path_factory, mlflow_db_template):
    tmp = tmp_path_factory.mktemp("strategies")
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = fresh_store(mlflow_db_template, tmp / "mlflow.db")
    code = main(["compare", str(tmp / "space.yaml"), "--tracking-uri", uri,
                 "--storage", str(tmp / "runs"), "--output", str(tmp / "out")])
    assert code == 0
    return uri, tmp / "out", json.loads((tmp / "out" / "compare.json").read_text())


def test_every_strategy_has_curves_and_tables(compared):
    _, out, result = compared
    rep = result["strategies"]
    names = {"two_stage_k1", "two_stage_k2", "two_stage_adam_k1", "two_stage_adam_k2",
             "asha", "asha_tpe", "random"}
    assert {r["strategy"] for r in rep["targets"]} == names
    # regret at 10/20/30/50% of the grid, by trial-seconds and by epochs
    assert {(r["strategy"], r["budget_share"]) for r in rep["budgets"]} == {
        (s, b) for s in names for b in (0.1, 0.2, 0.3, 0.5)}
    assert len(rep["budgets_epochs"]) == len(rep["budgets"])
    assert rep["truth"]["arch"] in ("mlp-4", "mlp-16") and rep["grid"]["epochs"] == 4 * 3
    curves = pd.read_csv(out / "strategies-curves.csv")
    # asha / asha_tpe / random stop once their trials ran half the grid's epochs (6); the
    # trial that crosses the budget is stopped, so they end at 6 or just past
    for name in ("asha", "asha_tpe", "random"):
        assert 6 <= curves[curves["strategy"] == name]["epochs"].max() <= 6 + 2
    # two-stage: 2 stage-1 runs of 3 epochs, then stage 2 (k=2 tunes both architectures,
    # 2 trials each)
    k2 = curves[curves["strategy"] == "two_stage_k2"]
    assert k2["epochs"].tolist() == [3, 6, 9, 12, 15, 18]
    assert k2["regret"].isna().tolist()[:2] == [True, True]
    assert (out / "anytime-curves.png").stat().st_size > 1000
    report = (out / "report-strategies.md").read_text()
    assert "Compute to a regret of 0.5 points" in report and "regret at 50%" in report


def test_lr_free_proxies_are_in_the_fidelity_table(compared):
    _, _, result = compared
    proxies = {r["proxy"] for r in result["by_momentum"]["0.0"]["fidelity"]}
    assert set(LR_FREE_METHODS) <= proxies


def test_strategy_trials_are_mlflow_runs_under_the_compare_run(compared):
    uri, _, result = compared
    _, runs = runs_of(uri)
    parent = result["run_ids"]["compare"]
    strategy_runs = {r.info.run_name: r for r in runs
                     if r.data.tags.get("alrao_tune.kind") == "strategy"}
    assert sorted(strategy_runs) == sorted(f"strategy {s}-r0" for s in STRATEGIES)
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in strategy_runs.values())
    children = lambda rid: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == rid]
    asha = children(strategy_runs["strategy asha-r0"].info.run_id)
    assert len(asha) >= 3  # one run per trial, each with its per-epoch values
    # the two-stage strategy's screening nests: pipeline -> stage runs -> trials
    (pipeline,) = children(strategy_runs["strategy two_stage_adam-r0"].info.run_id)
    assert sorted(r.info.run_name for r in children(pipeline.info.run_id)) == [
        "stage1 (adam)", "stage2 (optuna)"]
    compare_run = next(r for r in runs if r.info.run_id == parent)
    assert "strategy/asha/final_regret" in compare_run.data.metrics
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_stage2_methods_tune_every_architecture_from_its_alrao_rate(compared):
    uri, out, result = compared
    rep = result["stage2_methods"]
    table = {r["method"]: r for r in rep["table"]}
    assert sorted(table) == sorted(METHODS)
    assert all(r["cases"] == 2 for r in table.values())  # both architectures, one repeat
    assert {r["arch"] for r in rep["truth"]} == {"mlp-4", "mlp-16"}
    curves = pd.read_csv(out / "stage2-methods-curves.csv")
    assert len(curves) == 2 * 2 * 2 and set(curves["trials"]) == {1, 2}
    # each architecture's first trial is its Alrao effective rate (clipped into stage2.lr);
    # the bracket's second is half a decade away (the ladder), whether or not the first
    # had ended; ASHA per architecture may stop a second trial early, never the first
    trials = pd.read_csv(out / "trials.csv")
    eff = trials[trials["proxy"] == "alrao"].set_index("arch")["lr_eff"].clip(1e-2, 1.0)
    log = pd.read_csv(next((out.parent / "runs").rglob("stage2-bracket-asha-r0.csv")))
    for arch, rows in log.sort_values("end").groupby("arch"):
        assert rows["lr"].iloc[0] == pytest.approx(eff[arch], rel=1e-6)
        assert rows["lr"].iloc[1] == pytest.approx(
            bracket_next(eff[arch], 1e-2, 1.0, [(eff[arch], None)]), rel=1e-6)
        assert rows["epochs"].iloc[0] == 3 and 1 <= rows["epochs"].iloc[1] <= 3
    first = curves[curves["trials"] == 1]
    assert first.apply(lambda r: r["lr"] == pytest.approx(eff[r["arch"]], rel=1e-6),
                       axis=1).all()
    assert "trials to land within 0.5 points" in (out / "report-stage2-methods.md").read_text()
    _, runs = runs_of(uri)
    method_runs = [r for r in runs if r.data.tags.get("alrao_tune.kind") == "stage2_method"]
    assert sorted(r.info.run_name for r in method_runs) == sorted(
        f"stage-2 method {m} r0" for m in METHODS)
    compare_run = next(r for r in runs if r.info.run_id == result["run_ids"]["compare"])
    assert "stage2_method/bracket-asha/trials_mean" in compare_run.data.metrics
