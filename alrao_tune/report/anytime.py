"""Anytime curves of screening strategies and their compute budgets (pure, tested by equality).

A strategy's *trial log* has one row per trial it ran, with columns

``strategy, repeat, end, arch, lr, seconds, epochs, score, test_acc, returnable``

``end`` orders the trials by when they ended; ``seconds`` and ``epochs`` are what the trial
cost (a trial stopped early counts what it ran); ``score`` is its best validation loss
(lower is better; diverged or failed: ``inf``); ``test_acc`` the test accuracy of its model
at that best epoch; ``returnable`` says whether the strategy could hand this trial's
configuration to the user (a two-stage screening returns only its stage-2 trials: its
stage-1 runs cost compute but are not an answer).

After each trial ends, the strategy *would return* the returnable trial with the lowest
score so far (ties: the one that ended first). Its *regret* is the test-accuracy gap in
points to the truth, the grid's best architecture at its best rate
(:func:`truth_best`): ``100 * (best_acc - test_acc)``; negative when the strategy found a
better configuration than the grid. Every trial's compute counts, returnable or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from alrao_tune.report import ranking
from alrao_tune.report.compare import grid_rows, truth_tables

LOG_COLUMNS = ("strategy", "repeat", "end", "arch", "lr", "seconds", "epochs", "score",
               "test_acc", "returnable")
CURVE_COLUMNS = ("strategy", "repeat", "trials", "seconds", "epochs", "arch", "lr", "regret")
BUDGETS = (0.1, 0.2, 0.3, 0.5)  # shares of the grid's compute
TARGET = 0.5  # regret in test-accuracy points


def truth_best(trials: pd.DataFrame, momentum: float) -> tuple[str, float]:
    """The grid's best architecture (lowest seed-averaged best validation loss at its best
    rate per seed) and its mean test accuracy over seeds."""
    truth = truth_tables(trials, momentum)
    best = str(ranking.seed_average(truth["val_loss"]).idxmin())
    return best, float(truth["test_acc"].loc[best].mean())


def grid_compute(trials: pd.DataFrame, momentum: float) -> tuple[float, float]:
    """Trial-seconds and epochs of the grid search on ONE seed (mean over the seeds): what a
    user who grid-searched once would have spent."""
    grid = grid_rows(trials, momentum)
    n = max(grid["seed"].nunique(), 1)
    return float(grid["time_total_s"].sum()) / n, float(grid["epochs"].sum()) / n


def anytime_curve(log: pd.DataFrame, best_acc: float) -> pd.DataFrame:
    """One row per trial of each (strategy, repeat) of ``log``, in the order trials ended:
    cumulative ``trials``, ``seconds`` and ``epochs``, and the configuration (``arch``,
    ``lr``) the strategy would return then with its ``regret`` (NaN before any returnable
    trial ended)."""
    rows = []
    for (strategy, repeat), group in log.groupby(["strategy", "repeat"], sort=True):
        group = group.sort_values("end", kind="stable")
        seconds = epochs = 0.0
        incumbent = None
        for n, row in enumerate(group.itertuples(), start=1):
            seconds += float(row.seconds)
            epochs += float(row.epochs)
            if (row.returnable and math.isfinite(row.score)
                    and (incumbent is None or row.score < incumbent.score)):
                incumbent = row
            regret = (math.nan if incumbent is None
                      else 100.0 * (best_acc - float(incumbent.test_acc)))
            rows.append({"strategy": strategy, "repeat": repeat, "trials": n,
                         "seconds": seconds, "epochs": epochs,
                         "arch": None if incumbent is None else incumbent.arch,
                         "lr": math.nan if incumbent is None else incumbent.lr,
                         "regret": regret})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def compute_to_target(curve: pd.DataFrame, axis: str = "seconds",
                      target: float = TARGET) -> float:
    """The cumulative ``axis`` (seconds or epochs) at which one curve first has regret
    ``<= target``; ``inf`` if it never does."""
    hit = curve[curve["regret"] <= target + 1e-12]
    return float(hit[axis].iloc[0]) if len(hit) else math.inf


def regret_at(curve: pd.DataFrame, budget: float, axis: str = "seconds") -> float:
    """One curve's regret once ``budget`` of ``axis`` is spent: that of the last trial that
    ended within the budget (NaN if none had, or nothing returnable had ended)."""
    within = curve[curve[axis] <= budget + 1e-12]
    return float(within["regret"].iloc[-1]) if len(within) else math.nan


def budget_table(curves: pd.DataFrame, grid_total: float, axis: str = "seconds",
                 shares: Sequence[float] = BUDGETS) -> pd.DataFrame:
    """Regret at fixed budgets (``shares`` of ``grid_total``) per strategy: mean and std
    (ddof 0) over the repeats that had an answer by then (``answered`` of ``repeats``)."""
    rows = []
    for strategy, group in curves.groupby("strategy", sort=False):
        for share in shares:
            values = [regret_at(c, share * grid_total, axis)
                      for _, c in group.groupby("repeat", sort=True)]
            got = np.array([v for v in values if math.isfinite(v)])
            rows.append({"strategy": strategy, "budget_share": share,
                         "regret_mean": float(got.mean()) if len(got) else math.nan,
                         "regret_std": float(got.std()) if len(got) else math.nan,
                         "answered": len(got), "repeats": len(values)})
    return pd.DataFrame(rows, columns=["strategy", "budget_share", "regret_mean",
                                       "regret_std", "answered", "repeats"])


def target_table(curves: pd.DataFrame, grid_seconds: float, grid_epochs: float,
                 target: float = TARGET) -> pd.DataFrame:
    """Per strategy: the compute to reach regret ``<= target`` (mean over repeats, in
    trial-seconds and epochs, and as shares of the grid's; ``inf`` when some repeat never
    reached it, ``reached`` counts those that did), the total compute spent and the final
    regret (means over repeats)."""
    rows = []
    for strategy, group in curves.groupby("strategy", sort=False):
        per = [c for _, c in group.groupby("repeat", sort=True)]
        secs = [compute_to_target(c, "seconds", target) for c in per]
        eps = [compute_to_target(c, "epochs", target) for c in per]
        mean_s, mean_e = float(np.mean(secs)), float(np.mean(eps))
        rows.append({
            "strategy": strategy, "reached": sum(math.isfinite(s) for s in secs),
            "repeats": len(per), "seconds_to_target": mean_s,
            "share_to_target": mean_s / grid_seconds if grid_seconds else math.nan,
            "epochs_to_target": mean_e,
            "epoch_share_to_target": mean_e / grid_epochs if grid_epochs else math.nan,
            "total_share": float(np.mean([c["seconds"].iloc[-1] for c in per])) / grid_seconds
            if grid_seconds else math.nan,
            "final_regret": float(np.mean([c["regret"].iloc[-1] for c in per]))})
    return pd.DataFrame(rows)


def two_stage_logs(stage1: pd.DataFrame, stage2: pd.DataFrame, ranked: Sequence[str],
                   ks: Sequence[int], name: str = "two_stage") -> pd.DataFrame:
    """The trial logs of the two-stage screening for each ``k`` from ONE run with the
    largest k: the stage-1 rows (not returnable) and the stage-2 rows of the top-``k``
    architectures of ``ranked`` (returnable), in the order they ended. Stage 2 tunes
    each architecture with its own study, so the top-k subset is what a run with that k
    would have done. Strategy names ``<name>_k<k>``."""
    parts = []
    for k in ks:
        if k > len(ranked):
            continue
        one = stage1.assign(returnable=False)
        two = stage2[stage2["arch"].isin(list(ranked[:k]))].assign(returnable=True)
        parts.append(pd.concat([one, two]).assign(strategy=f"{name}_k{k}"))
    if not parts:
        return pd.DataFrame(columns=list(LOG_COLUMNS))
    return pd.concat(parts, ignore_index=True)[list(LOG_COLUMNS)]


def curve_points(curves: pd.DataFrame, grid_seconds: float) -> pd.DataFrame:
    """The anytime curves for the figure: ``strategy, repeat, share, regret`` (compute as a
    share of the grid's, rows without an answer dropped)."""
    points = curves.dropna(subset=["regret"])
    return pd.DataFrame({"strategy": points["strategy"], "repeat": points["repeat"],
                         "share": points["seconds"] / grid_seconds if grid_seconds
                         else math.nan, "regret": points["regret"]}).reset_index(drop=True)


def strategy_report(logs: pd.DataFrame, trials: pd.DataFrame, momentum: float,
                    target: float = TARGET) -> dict[str, Any]:
    """Every table of the strategies' comparison against the grid (SGD at ``momentum``) in
    ``trials``: the truth, the grid's compute on one seed, the compute to ``target`` per
    strategy, the regret at :data:`BUDGETS` of the grid's trial-seconds and epochs, and the
    curves."""
    arch, acc = truth_best(trials, momentum)
    seconds, epochs = grid_compute(trials, momentum)
    curves = anytime_curve(logs, acc)
    return {"truth": {"arch": arch, "test_acc": acc, "momentum": momentum, "target": target},
            "grid": {"seconds": seconds, "epochs": epochs},
            "targets": target_table(curves, seconds, epochs, target),
            "budgets": budget_table(curves, seconds, "seconds"),
            "budgets_epochs": budget_table(curves, epochs, "epochs"),
            "curves": curves}


def strategies_markdown(rep: dict[str, Any]) -> str:
    """The strategies' section of the compare report (markdown)."""
    t, g = rep["truth"], rep["grid"]
    budgets = rep["budgets"].pivot_table(index="strategy", columns="budget_share",
                                         values="regret_mean", sort=False, dropna=False)
    budgets.columns = [f"regret at {c:.0%}" for c in budgets.columns]
    return "".join([
        "\n### Screening strategies at equal compute\n\n",
        f"Truth: {t['arch']} at its best SGD rate (momentum {t['momentum']:g}), test accuracy "
        f"{100 * t['test_acc']:.2f}%. Grid on one seed: {g['seconds']:.0f} trial-seconds, "
        f"{g['epochs']:.0f} epochs.\n\n",
        f"Compute to a regret of {t['target']:g} points or less (mean over repeats; inf: some "
        "repeat never got there):\n\n",
        rep["targets"].to_markdown(index=False, floatfmt=".3g"),
        "\n\nRegret (points) at fixed shares of the grid's trial-seconds (mean over the "
        "repeats with an answer by then):\n\n",
        budgets.reset_index().to_markdown(index=False, floatfmt=".2f"),
        "\n\nThe same by epochs:\n\n",
        rep["budgets_epochs"].to_markdown(index=False, floatfmt=".3g"), "\n"])


def strategy_metrics(rep: dict[str, Any]) -> dict[str, float]:
    """Finite numbers of the strategies' report as MLflow metrics of the compare run."""
    out: dict[str, float] = {}
    for row in rep["targets"].itertuples():
        out[f"strategy/{row.strategy}/share_to_target"] = row.share_to_target
        out[f"strategy/{row.strategy}/epoch_share_to_target"] = row.epoch_share_to_target
        out[f"strategy/{row.strategy}/final_regret"] = row.final_regret
    for row in rep["budgets"].itertuples():
        out[f"strategy/{row.strategy}/regret_at_{round(100 * row.budget_share)}pct"] = \
            row.regret_mean
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}
