"""A tiny `alrao-tune compare` on real Ray + MLflow: tables, JSON, runs, divergence."""

from __future__ import annotations

import json

import pytest
import yaml

from alrao_tune.cli import main
from tests.tune.test_screen import TINY, runs_of

pytestmark = pytest.mark.slow

SPACE = {
    **TINY,
    "name": "tinycmp",
    "architectures": TINY["architectures"][:2],
    "stage1": {"top_k": 1},
    # lr 1000 makes plain SGD diverge on these nets: a diverged grid point
    "compare": {"lr_grid": [0.1, 1000.0], "seeds": 1, "alrao_auto_range": False},
}


@pytest.fixture(scope="module")
def compared(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{tmp}/mlflow.db"
    code = main(["compare", str(tmp / "space.yaml"), "--tracking-uri", uri,
                 "--storage", str(tmp / "runs"), "--output", str(tmp / "out"), "--json"])
    assert code == 0
    return uri, tmp / "out", json.loads((tmp / "out" / "compare.json").read_text())


def test_compare_writes_table_report_and_figure(compared):
    _, out, result = compared
    report = result["by_momentum"]["0.0"]
    # Table 1: one row per architecture with SGD's best rate, Adam and Alrao
    assert sorted(r["arch"] for r in report["table1"]) == ["mlp-16", "mlp-4"]
    assert [r["sgd_best_lr"] for r in report["table1"]] == pytest.approx([0.1, 0.1])
    proxies = {r["proxy"] for r in report["fidelity"]}
    assert {"alrao", "alrao_best_head", "adam", "lrfind_1cycle", "sgd_default",
            "param_count", "ensemble_alrao_adam"} <= proxies
    assert (out / "report-momentum0.0.md").read_text().startswith("### Table 1")
    assert (out / "scatter-momentum0.0.png").stat().st_size > 1000
    costs = {r["proxy"]: r for r in report["costs"]}
    assert costs["grid (truth)"]["share_of_grid"] == 1.0
    assert costs["alrao"]["share_of_grid"] > 0


def test_diverged_grid_point_is_a_result(compared):
    _, _, result = compared
    trials = {(t["arch"], t["proxy"], t["lr"]): t for t in result_trials(compared)}
    for arch in ("mlp-4", "mlp-16"):
        # the lr=1000 SGD run diverged and is shown as such, the lr=0.1 run is not
        assert trials[(arch, "sgd", 1000.0)]["status"] == "diverged"
        assert trials[(arch, "sgd", 0.1)]["status"] == "completed"
    assert len(result["run_ids"]) == 1


def result_trials(compared):
    _, out, _ = compared
    import pandas as pd

    return pd.read_csv(out / "trials.csv").to_dict("records")


def test_every_run_is_in_mlflow_under_the_compare_run(compared):
    uri, _, result = compared
    _, runs = runs_of(uri)
    parent = result["run_ids"]["compare"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    # 2 archs x (2 grid rates + default-rate SGD + Adam + Alrao + range-test 1cycle)
    assert len(children) == 2 * 6
    assert {r.info.status for r in runs} == {"FINISHED"}
    parent_run = next(r for r in runs if r.info.run_id == parent)
    assert "tau_avg/alrao" in parent_run.data.metrics
