"""A tiny `alrao-tune compare` on real Ray + MLflow: tables, JSON, runs, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alrao_tune.cli import main
from tests.tune.reliability_helpers import fresh_store
from tests.tune.test_screen import TINY, runs_of

pytestmark = pytest.mark.slow

SPACE = {
    **TINY,
    "name": "tinycmp",
    "architectures": TINY["architectures"][:2],
    "stage1": {"top_k": 1},
    # lr 1000 makes plain SGD diverge on these nets: a diverged grid point
    "compare": {"lr_grid": [0.1, 1000.0], "seeds": 1, "alrao_auto_range": False,
                "alrao_momentum": [0.9], "alrao_ranges": [[0.01, 1.0]],
                "alrao_variants": [{"n_heads": 2, "head_lr_max": 3.0}],
                "lr_free": [], "strategies": []},  # both: tests/tune/test_strategies.py
}


@pytest.fixture(scope="module")
def compared(ray_local, tmp_path_factory, mlflow_db_template):
    tmp = tmp_path_factory.mktemp("compare")
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = fresh_store(mlflow_db_template, tmp / "mlflow.db")
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
            "param_count", "ensemble_alrao_adam", "alrao_momentum0.9", "alrao_train_area",
            "alrao_val_plus_area", "alrao_range0.01-1", "alrao_hmax3_K2",
            "alrao_at_epoch"} <= proxies
    assert (out / "report-momentum0.0.md").read_text().startswith("### Table 1")
    assert (out / "scatter-momentum0.0.png").stat().st_size > 1000
    # Figure 2: per-epoch validation loss of every grid rate and of Alrao, read from MLflow
    assert (out / "curves-momentum0.0.png").stat().st_size > 1000
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["proxy"]) == {"alrao", "sgd_m0"}
    assert curves.groupby(["arch", "proxy", "lr"], dropna=False).ngroups == 2 * 3
    trials = pd.read_csv(out / "trials.csv")
    alrao = trials[trials["proxy"] == "alrao"]
    # the training-curve area: the mean training loss over the first min_epochs epochs
    assert alrao["train_area"].between(0, 5).all()
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
    # 2 archs x (2 grid rates + default-rate SGD + Adam + Alrao + Alrao with momentum
    # + Alrao on [0.01, 1] + Alrao with 2 heads on [1e-3, 3] + range-test 1cycle)
    assert len(children) == 2 * 9
    variant = [r for r in children if "alrao_hmax3_K2" in r.info.run_name]
    assert len(variant) == 2
    param = lambda run, key: next(  # noqa: E731 - the trial config is flattened
        v for k, v in run.data.params.items() if k.rpartition(".")[2] == key)
    assert {(param(r, "n_heads"), param(r, "head_lr_max")) for r in variant} == {("2", "3.0")}
    assert {r.info.status for r in runs} == {"FINISHED"}
    parent_run = next(r for r in runs if r.info.run_id == parent)
    assert "tau_avg/alrao" in parent_run.data.metrics


def test_resume_of_a_finished_comparison_exits_2_and_writes_nothing(compared, tmp_path,
                                                                     capsys):
    uri, out, _ = compared
    storage = out.parent / "runs"
    before = runs_of(uri)[1]
    code = main(["compare", str(out.parent / "space.yaml"), "--tracking-uri", uri,
                 "--storage", str(storage), "--resume"])
    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert len(runs_of(uri)[1]) == len(before)


def test_resume_with_other_settings_exits_2_and_writes_nothing(compared, tmp_path, capsys):
    """A comparison is resumed only with the settings it was started with: other ``--set``
    flags would hand Tune another list of runs."""
    import shutil

    uri, out, _ = compared
    shutil.copytree(out.parent / "runs", tmp_path / "runs")
    shutil.copyfile(out.parent / "mlflow.db", tmp_path / "mlflow.db")
    state_file = next((tmp_path / "runs").glob("tinycmp/compare-*/pipeline.json"))
    state = json.loads(state_file.read_text())
    assert state["settings"]  # the fingerprint of the runs it was started with
    state_file.write_text(json.dumps({**state, "status": "RUNNING"}))  # as if interrupted
    files = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "runs").rglob("*"))
    db = (tmp_path / "mlflow.db").read_bytes()
    code = main(["compare", str(out.parent / "space.yaml"), "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--storage", str(tmp_path / "runs"),
                 "--resume", "--set", "compare.adam=false"])
    assert code == 2
    assert "started with other settings" in capsys.readouterr().err
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "runs").rglob("*")) == files
    assert (tmp_path / "mlflow.db").read_bytes() == db


def test_killed_comparison_resumes_without_rerunning_finished_runs(ray_local, tmp_path,
                                                                   mlflow_db_template):
    """SIGKILL to ``alrao-tune compare`` once some runs ended; ``--resume`` (in this
    process: it is not killed) finishes it: the runs that had ended are not run again, and
    MLflow holds one ended run per trial under the same compare run."""
    from tests.tune.reliability_helpers import (
        Screening,
        mlflow_runs,
        newest_state_text,
        run_here,
    )

    # runs of a second or more each (10 epochs of 32 steps), so that the kill lands while
    # some are still running
    space = {**SPACE, "name": "killcmp", "training": {**TINY["training"], "epochs": 10},
             "compare": {**SPACE["compare"], "alrao_momentum": [], "alrao_ranges": [],
                         "alrao_variants": []},
             "dataset": {"name": "blobs", "options": {"n_train": 1000, "n_features": 6,
                                                      "n_classes": 3}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    uri = fresh_store(mlflow_db_template, tmp_path / "mlflow.db")
    storage = tmp_path / "runs"
    args = [str(tmp_path / "space.yaml"), "--tracking-uri", uri, "--storage", str(storage),
            "--output", str(tmp_path / "out")]

    def experiment():
        found = sorted(storage.glob("killcmp/compare-*/compare"))
        return found[-1] if found else None

    # Tune saves its experiment state every second here (default: adaptive, which a run
    # this short can finish before), so the kill lands with some runs recorded as ended
    first = Screening(args, tmp_path / "first.log", command="compare",
                      env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    first.wait_until(lambda: newest_state_text(experiment()).count("TERMINATED") >= 3,
                     what="3 finished compare runs")
    first.kill()
    from alrao_tune.tune.runner import experiment_trials

    ended = {t.trial_id: t.checkpoint.path for t in experiment_trials(experiment())
             if t.status == "TERMINATED"}
    stamps = {i: (Path(c) / "trainer.pt").stat().st_mtime_ns for i, c in ended.items()}
    assert 3 <= len(ended) < 12

    code = run_here([*args, "--resume"], tmp_path / "second.log", command="compare")
    second_log = (tmp_path / "second.log").read_text()
    assert code == 0, second_log[-3000:]
    assert "runs had ended" in second_log
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 12 and set(ended) <= set(trials["trial_id"])
    for trial_id, checkpoint in ended.items():  # not run again
        assert (Path(checkpoint) / "trainer.pt").stat().st_mtime_ns == stamps[trial_id]
    _, runs = mlflow_runs(uri, "killcmp")
    parents = [r for r in runs if r.data.tags.get("alrao_tune.kind") == "compare"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parents[0].info.run_id]
    assert sorted(r.data.tags["alrao_tune.trial_id"] for r in children) == \
        sorted(trials["trial_id"])
    assert {r.info.status for r in children} <= {"FINISHED"}
