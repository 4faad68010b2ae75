"""Anytime curves and budgets against hand-made trial logs (exact equality)."""

from __future__ import annotations

import math

import pandas as pd

from alrao_tune.report import anytime

INF = math.inf


def log(strategy: str, repeat: int, rows: list[tuple]) -> pd.DataFrame:
    """rows: (end, arch, lr, seconds, epochs, score, test_acc, returnable)."""
    return pd.DataFrame([{"strategy": strategy, "repeat": repeat, "end": r[0], "arch": r[1],
                          "lr": r[2], "seconds": r[3], "epochs": r[4], "score": r[5],
                          "test_acc": r[6], "returnable": r[7]} for r in rows])


# truth: 0.90 test accuracy. Strategy "a": the first trial is poor, the second ties the
# third on score (the earlier one is kept), the fourth reaches the target.
A0 = log("a", 0, [(3.0, "m2", 0.01, 10.0, 2, 0.80, 0.70, True),
                  (1.0, "m1", 0.10, 20.0, 5, 0.50, 0.85, True),   # ends first
                  (4.0, "m1", 0.20, 10.0, 5, 0.50, 0.88, True),   # ties 0.50: not taken
                  (5.0, "m3", 0.10, 40.0, 10, 0.30, 0.898, True)])
# strategy "b": never reaches the target; its first trial is not returnable (a stage-1 run)
B0 = log("b", 0, [(1.0, "m1", math.nan, 30.0, 10, 0.10, 0.99, False),
                  (2.0, "m2", 0.1, 30.0, 10, 0.40, 0.80, True),
                  (3.0, "m2", 0.3, 30.0, 10, INF, 0.10, True)])    # diverged


def curves() -> pd.DataFrame:
    return anytime.anytime_curve(pd.concat([A0, B0], ignore_index=True), best_acc=0.90)


def test_curve_follows_the_incumbent_with_ties_to_the_earlier_trial():
    c = curves()
    a = c[c["strategy"] == "a"]
    # trials in the order they ended; cumulative compute counts every trial
    assert a["seconds"].tolist() == [20.0, 30.0, 40.0, 80.0]
    assert a["epochs"].tolist() == [5.0, 7.0, 12.0, 22.0]
    assert a["arch"].tolist() == ["m1", "m1", "m1", "m3"]
    assert a["lr"].tolist() == [0.10, 0.10, 0.10, 0.10]  # the tie kept lr 0.1, not 0.2
    assert [round(v, 9) for v in a["regret"]] == [5.0, 5.0, 5.0, 0.2]


def test_a_trial_that_is_not_returnable_costs_compute_but_is_no_answer():
    b = curves()[lambda f: f["strategy"] == "b"]
    assert math.isnan(b["regret"].iloc[0]) and pd.isna(b["arch"].iloc[0])
    assert [round(v, 9) for v in b["regret"].iloc[1:]] == [10.0, 10.0]  # inf score ignored
    assert b["seconds"].tolist() == [30.0, 60.0, 90.0]


def test_compute_to_target_and_regret_at_budgets():
    c = curves()
    a, b = c[c["strategy"] == "a"], c[c["strategy"] == "b"]
    assert anytime.compute_to_target(a, "seconds") == 80.0
    assert anytime.compute_to_target(a, "epochs") == 22.0
    assert anytime.compute_to_target(b, "seconds") == INF  # never reaches 0.5 points
    assert round(anytime.regret_at(a, 45.0), 9) == 5.0
    assert round(anytime.regret_at(a, 80.0), 9) == 0.2  # a budget hit exactly counts
    assert math.isnan(anytime.regret_at(a, 19.0))  # nothing ended yet
    assert math.isnan(anytime.regret_at(b, 30.0))  # only a non-returnable trial ended


def test_tables_over_repeats():
    a1 = log("a", 1, [(1.0, "m3", 0.1, 100.0, 20, 0.3, 0.90, True)])
    c = anytime.anytime_curve(pd.concat([A0, a1, B0], ignore_index=True), best_acc=0.90)
    budgets = anytime.budget_table(c, grid_total=200.0, shares=(0.1, 0.5))
    rows = {(r.strategy, r.budget_share): r for r in budgets.itertuples()}
    # at 10% (20 s) only repeat 0 of "a" has an answer (5 points); at 50% (100 s) both
    assert (rows[("a", 0.1)].answered, rows[("a", 0.1)].repeats) == (1, 2)
    assert round(rows[("a", 0.1)].regret_mean, 9) == 5.0 and rows[("a", 0.1)].regret_std == 0
    assert round(rows[("a", 0.5)].regret_mean, 9) == 0.1  # mean of 0.2 and 0.0
    assert round(rows[("a", 0.5)].regret_std, 9) == 0.1
    assert rows[("b", 0.1)].answered == 0 and math.isnan(rows[("b", 0.1)].regret_mean)
    target = anytime.target_table(c, grid_seconds=200.0, grid_epochs=100.0).set_index(
        "strategy")
    assert target.loc["a", "seconds_to_target"] == 90.0  # mean of 80 and 100
    assert target.loc["a", "share_to_target"] == 0.45
    assert target.loc["a", "epochs_to_target"] == 21.0
    assert target.loc["a", "reached"] == 2
    assert target.loc["b", "seconds_to_target"] == INF and target.loc["b", "reached"] == 0
    assert target.loc["b", "total_share"] == 0.45


def test_two_stage_logs_per_k_from_one_run():
    s1 = log("x", 0, [(1.0, "m1", math.nan, 5.0, 3, 0.2, 0.5, True),
                      (2.0, "m2", math.nan, 5.0, 3, 0.3, 0.5, True)])
    s2 = log("x", 0, [(3.0, "m2", 0.1, 10.0, 5, 0.25, 0.88, True),
                      (4.0, "m1", 0.1, 10.0, 5, 0.20, 0.89, True)])
    logs = anytime.two_stage_logs(s1, s2, ranked=["m1", "m2"], ks=(1, 2, 3))
    # k = 3 exceeds the architectures: left out; stage-1 rows never returnable
    assert sorted(logs["strategy"].unique()) == ["two_stage_k1", "two_stage_k2"]
    k1 = logs[logs["strategy"] == "two_stage_k1"]
    assert k1["arch"].tolist() == ["m1", "m2", "m1"]
    assert k1["returnable"].tolist() == [False, False, True]
    c = anytime.anytime_curve(logs, best_acc=0.90).set_index(["strategy", "trials"])
    assert c.loc[("two_stage_k1", 3), "seconds"] == 20.0
    assert c.loc[("two_stage_k2", 4), "seconds"] == 30.0
    assert round(c.loc[("two_stage_k2", 3), "regret"], 9) == 2.0  # m2 answered first
    assert round(c.loc[("two_stage_k2", 4), "regret"], 9) == 1.0


def test_truth_best_and_grid_compute_on_a_trials_table():
    rows = []
    for seed in (0, 1):
        for arch, losses in (("m1", (0.5, 0.4)), ("m2", (0.3, 0.6))):
            for lr, loss in zip((0.1, 1.0), losses):
                rows.append({"arch": arch, "seed": seed, "proxy": "sgd", "lr": lr,
                             "momentum": 0.0, "status": "completed", "best_val_loss": loss,
                             "best_val_acc": 0.9, "test_acc": 0.75 + seed / 8,
                             "time_total_s": 10.0, "epochs": 4})
    trials = pd.DataFrame(rows)
    assert anytime.truth_best(trials, 0.0) == ("m2", 0.8125)
    # one seed's grid: 4 runs of 10 s and 4 epochs
    assert anytime.grid_compute(trials, 0.0) == (40.0, 16.0)


def test_dashboard_reads_the_strategies_from_compare_json():
    from alrao_tune.report import store_compare as rc

    c = curves()
    rep = {"grid": {"seconds": 100.0, "epochs": 50.0},
           "curves": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                       for k, v in r.items()} for r in c.to_dict("records")],
           "targets": [{"strategy": "a", "reached": 1}], "budgets": []}
    data = rc.CompareData("run", "0", {"strategies": rep}, pd.DataFrame())
    tables = rc.strategy_tables(data)
    # one point per trial with an answer, compute as a share of the grid's trial-seconds
    assert tables["points"]["share"].tolist() == [0.2, 0.3, 0.4, 0.8, 0.6, 0.9]
    assert tables["points"]["strategy"].tolist() == ["a"] * 4 + ["b"] * 2
    assert tables["targets"].to_dict("records") == [{"strategy": "a", "reached": 1}]
    assert rc.strategy_tables(rc.CompareData("run", "0", {}, pd.DataFrame())) == {}


def test_markdown_keeps_a_strategy_without_an_answer_at_any_budget():
    rep = anytime.strategy_report(
        B0.assign(returnable=False), pd.DataFrame(TRUTH_ROWS), momentum=0.0)
    text = anytime.strategies_markdown(rep)
    # no answer at any budget: the row is there, with empty cells, not dropped
    assert "| b          |" in text and "regret at 50%" in text


TRUTH_ROWS = [{"arch": "m1", "seed": 0, "proxy": "sgd", "lr": 0.1, "momentum": 0.0,
               "status": "completed", "best_val_loss": 0.5, "best_val_acc": 0.9,
               "test_acc": 0.9, "time_total_s": 100.0, "epochs": 10}]
