"""Pure functions from trial tables to leaderboards (tested by equality).

Stage-1 proxy score (documented in the README): for each architecture, the mean over
seeds of the best validation value of its Alrao runs, on the metric chosen in the search
space (``val_loss`` by default: the switch-averaged model's validation loss;
``best_head_val_loss``: the best single head's; ``val_acc``: accuracy, higher is better).
A diverged or failed run scores as the worst possible value, so the architecture ranks
last and its ``failed_runs`` count shows why.
"""

from __future__ import annotations

import math

import pandas as pd

from alrao_tune.schema import BAD_STATUSES


def _worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def proxy_scores(trials: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Stage-1 table: one row per architecture, ranked by the mean proxy score.

    Args:
        trials: the stage-1 trials table (see ``alrao_tune.tune.runner.trials_frame``).
        metric: ``val_loss`` | ``val_acc`` | ``best_head_val_loss``.
        mode: ``min`` or ``max``.

    Returns:
        Columns ``arch, alrao_score, alrao_score_std, seeds, failed_runs, lr_eff, n_params,
        trial_seconds, alrao_rank`` sorted by rank (1 = best).
    """
    column = f"best_{metric}"
    frame = trials.copy()
    bad = frame["status"].isin(BAD_STATUSES) | frame[column].isna()
    frame["score"] = frame[column].where(~bad, _worst(mode))
    frame["bad"] = bad.astype(int)
    grouped = frame.groupby("arch", sort=True)
    table = pd.DataFrame({
        "alrao_score": grouped["score"].mean(),
        "alrao_score_std": grouped["score"].std(ddof=0),
        "seeds": grouped["score"].size(),
        "failed_runs": grouped["bad"].sum(),
        "lr_eff": grouped["lr_eff"].apply(_geo_mean),
        "n_params": grouped["n_params"].max(),
        "trial_seconds": grouped["time_total_s"].sum(),
    }).reset_index()
    ascending = mode == "min"
    table = table.sort_values(["alrao_score", "arch"], ascending=[ascending, True], kind="stable")
    table["alrao_rank"] = range(1, len(table) + 1)
    return table.reset_index(drop=True)


def _geo_mean(values: pd.Series) -> float:
    logs = [math.log(v) for v in values if isinstance(v, float) and v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def top_k(stage1: pd.DataFrame, k: int) -> list[str]:
    """The ``k`` best-ranked architectures that did not fail in every seed."""
    usable = stage1[stage1["failed_runs"] < stage1["seeds"]]
    return list(usable.sort_values("alrao_rank")["arch"].head(k))


def best_trials(trials: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Stage-2 table: the best trial per architecture plus search statistics.

    Returns:
        Columns ``arch, best_lr, best_momentum, best_weight_decay, val_score, val_loss,
        val_acc, test_loss, test_acc, trials, failed_trials, trial_seconds, seed_trial_rank``
        where ``seed_trial_rank`` is the rank among its architecture's trials of the trial
        that started from the Alrao effective learning rate (1 = it was the best).
    """
    rows = []
    for arch, group in trials.groupby("arch", sort=True):
        bad, scores, order = _trial_order(group, metric, mode)
        best = group.loc[order[0]]
        seed_rank = (
            list(order).index(group.index[group["seeded"]][0]) + 1
            if "seeded" in group and group["seeded"].any() else None
        )
        rows.append({
            "arch": arch, "best_lr": best["lr"], "best_momentum": best["momentum"],
            "best_weight_decay": best["weight_decay"], "val_score": scores[order[0]],
            "val_loss": best["best_val_loss"], "val_acc": best["best_val_acc"],
            "test_loss": best["test_loss"], "test_acc": best["test_acc"],
            "trials": len(group), "failed_trials": int(bad.sum()),
            "trial_seconds": float(group["time_total_s"].sum()), "seed_trial_rank": seed_rank,
        })
    return pd.DataFrame(rows)


def _trial_order(group: pd.DataFrame, metric: str, mode: str
                 ) -> tuple[pd.Series, pd.Series, pd.Index]:
    """(bad flags, scores with bad trials worst, index best first) of one arch's trials."""
    column = f"best_{metric}"
    bad = group["status"].isin(BAD_STATUSES) | group[column].isna()
    scores = group[column].where(~bad, _worst(mode))
    return bad, scores, scores.sort_values(ascending=mode == "min", kind="stable").index


def winner_trial(board: pd.DataFrame, trials: pd.DataFrame, metric: str,
                 mode: str) -> pd.Series | None:
    """The trial behind the leaderboard's first row: its architecture's best trial in
    ``trials`` (the row :func:`best_trials` reports), or None when it has no usable one."""
    if board.empty or trials is None or trials.empty:
        return None
    group = trials[trials["arch"] == board.iloc[0]["arch"]]
    if group.empty:
        return None
    bad, _, order = _trial_order(group, metric, mode)
    return None if bad[order[0]] else group.loc[order[0]]


def leaderboard(stage1: pd.DataFrame, stage2: pd.DataFrame | None, mode: str) -> pd.DataFrame:
    """The final leaderboard: stage-2 winners first (by their tuned score), then the rest.

    Columns: ``rank, arch, n_params, alrao_score, alrao_rank, lr_eff, failed_runs,
    best_lr, val_loss, val_acc, test_loss, test_acc, stage2_rank, trial_seconds``.
    """
    board = stage1.copy()
    board["stage2_rank"] = math.nan
    if stage2 is not None and len(stage2):
        s2 = stage2.sort_values(["val_score", "arch"], ascending=[mode == "min", True])
        s2 = s2.assign(stage2_rank=range(1, len(s2) + 1))
        board = board.drop(columns=["stage2_rank"]).merge(
            s2[["arch", "best_lr", "val_loss", "val_acc", "test_loss", "test_acc",
                "stage2_rank", "trial_seconds"]].rename(columns={"trial_seconds": "s2_seconds"}),
            on="arch", how="left")
        board["trial_seconds"] = board["trial_seconds"] + board["s2_seconds"].fillna(0.0)
        board = board.drop(columns=["s2_seconds"])
    for col in ("best_lr", "val_loss", "val_acc", "test_loss", "test_acc"):
        if col not in board:
            board[col] = math.nan
    board = board.sort_values(["stage2_rank", "alrao_rank"], na_position="last", kind="stable")
    board.insert(0, "rank", range(1, len(board) + 1))
    columns = ["rank", "arch", "n_params", "alrao_score", "alrao_rank", "lr_eff", "failed_runs",
               "best_lr", "val_loss", "val_acc", "test_loss", "test_acc", "stage2_rank",
               "trial_seconds"]
    return board[columns].reset_index(drop=True)


def posterior_frame(histories: dict[int, list[tuple[int, float]]],
                    rates: list[float]) -> pd.DataFrame:
    """Long table ``step, head, lr, posterior`` from per-head ``(step, value)`` series."""
    rows = [{"step": step, "head": head, "lr": rates[head], "posterior": value}
            for head, series in sorted(histories.items()) for step, value in series]
    return pd.DataFrame(rows, columns=["step", "head", "lr", "posterior"])


def curves_frame(histories: dict[str, list[tuple[int, float]]]) -> pd.DataFrame:
    """Long table ``label, epoch, val_loss`` from per-run ``(epoch, value)`` series."""
    rows = [{"label": label, "epoch": epoch, "val_loss": value}
            for label, series in sorted(histories.items()) for epoch, value in series]
    return pd.DataFrame(rows, columns=["label", "epoch", "val_loss"])
