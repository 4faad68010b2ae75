"""Leaderboards and compare tables from hand-made trial tables (equality tests)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from alrao_tune.report import compare as report_compare
from alrao_tune.report import fidelity
from alrao_tune.report import screening as report


def stage1_trials() -> pd.DataFrame:
    rows = [
        # arch, seed, status, best_val_loss, lr_eff, seconds
        ("a", 0, "completed", 0.50, 0.1, 10.0),
        ("a", 1, "completed", 0.70, 0.1, 12.0),
        ("b", 0, "completed", 0.40, 0.01, 5.0),
        ("b", 1, "early_stopped", 0.60, 0.01, 6.0),
        ("c", 0, "diverged", math.nan, math.nan, 1.0),
        ("c", 1, "completed", 0.10, 1.0, 9.0),
    ]
    return pd.DataFrame([
        {"arch": a, "seed": s, "status": st, "best_val_loss": v, "best_val_acc": 1 - v,
         "lr_eff": lr, "time_total_s": t, "n_params": {"a": 10, "b": 20, "c": 30}[a]}
        for a, s, st, v, lr, t in rows])


def test_proxy_scores_rank_by_mean_best_validation_loss():
    table = report.proxy_scores(stage1_trials(), "val_loss", "min")
    # b: mean(0.4, 0.6) = 0.5 < a: 0.6; c diverged once -> worst score, ranked last
    assert list(table["arch"]) == ["b", "a", "c"]
    assert list(table["alrao_rank"]) == [1, 2, 3]
    assert table["alrao_score"].tolist()[:2] == pytest.approx([0.5, 0.6])
    assert table["alrao_score"].iloc[2] == math.inf
    assert list(table["failed_runs"]) == [0, 0, 1]
    assert table.loc[table["arch"] == "a", "trial_seconds"].item() == 22.0
    # the effective rate is the geometric mean over seeds
    assert table.loc[table["arch"] == "b", "lr_eff"].item() == pytest.approx(0.01)


def test_top_k_skips_architectures_that_failed_everywhere():
    trials = stage1_trials()
    trials.loc[trials["arch"] == "b", "status"] = "error"
    table = report.proxy_scores(trials, "val_loss", "min")
    assert report.top_k(table, 2) == ["a", "c"]


def test_accuracy_metric_ranks_highest_first():
    table = report.proxy_scores(stage1_trials(), "val_acc", "max")
    assert list(table["arch"]) == ["b", "a", "c"]


def stage2_trials() -> pd.DataFrame:
    return pd.DataFrame([
        {"arch": "b", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "status": "completed",
         "best_val_loss": 0.30, "best_val_acc": 0.9, "test_loss": 0.32, "test_acc": 0.88,
         "time_total_s": 3.0, "seeded": True},
        {"arch": "b", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "status": "diverged",
         "best_val_loss": math.nan, "best_val_acc": 0.1, "test_loss": math.nan,
         "test_acc": math.nan, "time_total_s": 1.0, "seeded": False},
        {"arch": "a", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "status": "completed",
         "best_val_loss": 0.45, "best_val_acc": 0.8, "test_loss": 0.5, "test_acc": 0.79,
         "time_total_s": 4.0, "seeded": False},
        {"arch": "a", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "status": "completed",
         "best_val_loss": 0.40, "best_val_acc": 0.82, "test_loss": 0.41, "test_acc": 0.8,
         "time_total_s": 4.0, "seeded": True},
    ])


def test_best_trials_and_leaderboard():
    s2 = report.best_trials(stage2_trials(), "val_loss", "min")
    assert list(s2["arch"]) == ["a", "b"]
    assert list(s2["best_lr"]) == [0.1, 0.05]
    assert list(s2["failed_trials"]) == [0, 1]
    # the Alrao-seeded first trial was the best one for both architectures
    assert list(s2["seed_trial_rank"]) == [1, 1]
    s1 = report.proxy_scores(stage1_trials(), "val_loss", "min")
    board = report.leaderboard(s1, s2, "min")
    # stage-2 winners first (b: 0.30 < a: 0.40), then the rest in stage-1 order
    assert list(board["arch"]) == ["b", "a", "c"]
    assert list(board["rank"]) == [1, 2, 3]
    assert board["stage2_rank"].tolist()[:2] == [1.0, 2.0]
    assert math.isnan(board["stage2_rank"].iloc[2])
    # compute adds both stages: b = 11 s (stage 1) + 4 s (stage 2)
    assert board.loc[board["arch"] == "b", "trial_seconds"].item() == 15.0


def test_posterior_and_curve_frames():
    frame = report.posterior_frame({0: [(10, 0.25)], 1: [(10, 0.75)]}, [1e-3, 1.0])
    assert frame.to_dict("records") == [
        {"step": 10, "head": 0, "lr": 1e-3, "posterior": 0.25},
        {"step": 10, "head": 1, "lr": 1.0, "posterior": 0.75}]
    curves = report.curves_frame({"x": [(1, 2.0), (2, 1.5)]})
    assert curves["val_loss"].tolist() == [2.0, 1.5]


def compare_trials() -> pd.DataFrame:
    rows = []
    # truth: best SGD over lr per (arch, seed); arch "q" diverges at lr 10
    grid = {("p", 0.1): 0.30, ("p", 10.0): 0.50, ("q", 0.1): 0.20, ("q", 10.0): math.nan}
    for (arch, lr), loss in grid.items():
        for seed in (0, 1):
            rows.append({"arch": arch, "seed": seed, "proxy": "sgd", "lr": lr, "momentum": 0.0,
                         "status": "diverged" if math.isnan(loss) else "completed",
                         "best_val_loss": loss + 0.01 * seed, "best_val_acc": 1 - loss,
                         "best_best_head_val_loss": math.nan, "test_acc": 1 - loss,
                         "test_loss": loss, "lr_eff": math.nan, "time_total_s": 10.0,
                         "epochs": 5, "n_params": {"p": 100, "q": 50}[arch]})
    for arch, loss in (("p", 0.25), ("q", 0.35)):
        for seed in (0, 1):
            rows.append({"arch": arch, "seed": seed, "proxy": "alrao", "lr": math.nan,
                         "momentum": 0.0, "status": "completed", "best_val_loss": loss,
                         "best_val_acc": 1 - loss, "best_best_head_val_loss": loss + 0.1,
                         "test_acc": 1 - loss, "test_loss": loss, "lr_eff": 0.1,
                         "time_total_s": 4.0, "epochs": 5,
                         "n_params": {"p": 100, "q": 50}[arch]})
    return pd.DataFrame(rows)


def test_truth_tables_take_the_best_grid_point():
    truth = report_compare.truth_tables(compare_trials(), 0.0)
    assert truth["best_lr"].to_dict() == {0: {"p": 0.1, "q": 0.1}, 1: {"p": 0.1, "q": 0.1}}
    assert truth["val_loss"][1].tolist() == pytest.approx([0.31, 0.21])


def test_table1_costs_and_pipeline():
    trials = compare_trials()
    t1 = report_compare.table1(trials, 0.0).set_index("arch")
    assert t1.loc["q", "sgd_val_loss"] == "0.205 ± 0.005"
    assert t1.loc["p", "alrao_val_loss"] == "0.250 ± 0.000"
    costs = report_compare.compute_costs(trials, 0.0).set_index("proxy")
    # grid: 2 archs x 2 rates x 2 seeds x 10 s; alrao: 2 x 2 x 4 s
    assert costs.loc["grid (truth)", "trial_seconds"] == 80.0
    assert costs.loc["alrao", "share_of_grid"] == pytest.approx(16 / 80)
    pipe = report_compare.pipeline_vs_grid(trials, 0.0, k=1)
    # Alrao ranks p first but the grid's best is q: regret = (0.8 - 0.7) in points
    assert pipe["pick"] == "p" and pipe["grid_best"] == "q"
    assert pipe["regret_acc_points"] == pytest.approx(10.0)
    assert pipe["share_of_grid"] == pytest.approx((16 + 40) / 80)


def test_curve_area_is_the_mean_of_the_first_epochs():
    assert report_compare.curve_area([2.0, 1.0, 0.0, 5.0], 3) == pytest.approx(1.0)
    assert report_compare.curve_area([2.0, 1.0], None) == pytest.approx(1.5)
    assert report_compare.curve_area([2.0, 1.0], 10) == pytest.approx(1.5)  # fewer epochs
    assert report_compare.curve_area([2.0, math.nan], 2) == math.inf
    assert report_compare.curve_area([], 2) == math.inf


def test_curve_area_and_momentum_proxies():
    trials = compare_trials()
    alrao = trials["proxy"] == "alrao"
    # q's Alrao run learns faster (smaller training-curve area) but validates worse
    trials["train_area"] = math.nan
    trials.loc[alrao, "train_area"] = trials.loc[alrao, "arch"].map({"p": 0.6, "q": 0.2})
    extra = trials[alrao].assign(proxy="alrao_momentum0.9",
                                 best_val_loss=lambda f: f["arch"].map({"p": 0.4, "q": 0.3}))
    tables = report_compare.proxy_tables(pd.concat([trials, extra]), default_lr=0.1,
                                         momentum=0.0)
    assert tables["alrao_train_area"][0].to_dict() == {"p": 0.6, "q": 0.2}
    assert tables["alrao_val_plus_area"][0].to_dict() == pytest.approx({"p": 0.85, "q": 0.55})
    assert tables["alrao_momentum0.9"][1].to_dict() == {"p": 0.4, "q": 0.3}
    fid = fidelity.fidelity(tables, report_compare.truth_tables(trials, 0.0)["val_loss"],
                           report_compare.truth_tables(trials, 0.0)["test_acc"], k=1,
                           mode="min", metric_mode="max").set_index("proxy")
    # the truth ranks q first: the area-aware score and momentum-Alrao agree, Alrao does not
    assert fid.loc["alrao_val_plus_area", "tau_avg"] == 1.0
    assert fid.loc["alrao_momentum0.9", "tau_avg"] == 1.0
    assert fid.loc["alrao", "tau_avg"] == -1.0


def test_pipeline_with_a_stage2_around_alraos_rate():
    trials = compare_trials()
    # Alrao's effective rate is 0.1: within 1 decade of it only the grid's 0.1 remains
    near = report_compare.pipeline_vs_grid(trials, 0.0, k=1, window=1.0)
    assert near["pick"] == "p" and near["regret_acc_points"] == pytest.approx(10.0)
    assert near["share_of_grid"] == pytest.approx((16 + 20) / 80)
    table = report_compare.pipelines(trials, 0.0).set_index(["stage2", "k"])
    assert list(table.index) == [("whole grid", 1), ("whole grid", 2),
                                 ("±1 decade of lr_eff", 1), ("±1 decade of lr_eff", 2)]
    both = table.loc[("whole grid", 2)]
    assert both["pick"] == "q" and both["regret_acc_points"] == pytest.approx(0.0)
    assert both["share_of_grid"] == pytest.approx((16 + 80) / 80)
    assert table.loc[("±1 decade of lr_eff", 2), "share_of_grid"] == pytest.approx(
        (16 + 40) / 80)


def test_value_at_epoch_is_the_fixed_epochs_value_or_the_last():
    assert report_compare.value_at_epoch([2.0, 1.0, 0.5, 0.7], 3) == 0.5
    assert report_compare.value_at_epoch([2.0, 1.0], 5) == 1.0  # stopped before epoch 5
    assert report_compare.value_at_epoch([2.0, 1.0], None) == 1.0
    assert report_compare.value_at_epoch([2.0, math.nan], 2) == math.inf
    assert report_compare.value_at_epoch([], 2) == math.inf


def test_fixed_epoch_and_two_draw_proxies():
    trials = compare_trials()
    alrao = trials["proxy"] == "alrao"
    # seed 1's draw of p is a bad one: the two-draw mean of seeds (0, 1) and (1, 0) sees it
    trials.loc[alrao & (trials["arch"] == "p") & (trials["seed"] == 1), "best_val_loss"] = 0.55
    trials["val_at_epoch"] = math.nan
    trials.loc[alrao, "val_at_epoch"] = trials.loc[alrao, "arch"].map({"p": 0.5, "q": 0.4})
    tables = report_compare.proxy_tables(trials, default_lr=0.1, momentum=0.0)
    assert tables["alrao_at_epoch"][0].to_dict() == {"p": 0.5, "q": 0.4}
    draws = tables["alrao_draws2"]
    assert draws[0].to_dict() == pytest.approx({"p": 0.40, "q": 0.35})  # seeds 0 and 1
    assert draws[1].to_dict() == pytest.approx({"p": 0.40, "q": 0.35})  # seeds 1 and 0
    assert tables["alrao"][1].to_dict() == pytest.approx({"p": 0.55, "q": 0.35})
