"""Pure functions from the compare job's trials table to its reports (tested by equality).

The trials table has one row per run with columns ``arch, seed, proxy, lr, momentum,
status, best_val_loss, best_best_head_val_loss, test_acc, test_loss, lr_eff,
time_total_s, epochs, n_params`` (and optionally ``train_area``, see :func:`curve_area`).
``proxy`` is ``sgd`` for the ground-truth grid and the proxy's name otherwise (``alrao``,
``alrao_momentum0.9``, ``alrao_auto``, ``adam``, ``lrfind_1cycle``, ``sgd_default``).

Ground truth ("best SGD over the grid") for momentum m: per (architecture, seed), the
lowest best-epoch validation loss over the grid's learning rates; its test accuracy is
that of the same run. Diverged or failed runs count as +inf loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from alrao_tune.report import ranking
from alrao_tune.schema import BAD_STATUSES

BAD = BAD_STATUSES


def _loss(frame: pd.DataFrame, column: str = "best_val_loss") -> pd.Series:
    bad = frame["status"].isin(BAD) | frame[column].isna()
    return frame[column].where(~bad, math.inf)


def _table(frame: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    """Score table: index = arch, columns = seed."""
    table = pd.DataFrame({"arch": frame["arch"], "seed": frame["seed"], "v": values})
    return table.pivot_table(index="arch", columns="seed", values="v", aggfunc="min",
                             dropna=False).sort_index()


def grid_rows(trials: pd.DataFrame, momentum: float) -> pd.DataFrame:
    """The ground-truth grid's runs for one SGD momentum."""
    return trials[(trials["proxy"] == "sgd") & np.isclose(trials["momentum"], momentum)]


def truth_tables(trials: pd.DataFrame, momentum: float) -> dict[str, pd.DataFrame]:
    """``val_loss``, ``test_acc`` and ``best_lr`` tables of the best grid point per (arch, seed)."""
    grid = grid_rows(trials, momentum).assign(loss=lambda f: _loss(f))
    best = grid.sort_values(["arch", "seed", "loss", "lr"]).groupby(["arch", "seed"]).head(1)
    return {
        "val_loss": _table(best, best["loss"]),
        "val_acc": _table(best, best["best_val_acc"].where(np.isfinite(best["loss"]), 0.0)),
        "test_acc": _table(best, best["test_acc"].where(np.isfinite(best["loss"]), 0.0)),
        "best_lr": _table(best, best["lr"]),
    }


PROXY_ORDER = ("alrao", "alrao_auto", "adam", "lrfind_1cycle", "sgd_default")


def curve_area(values: Sequence[float], epochs: int | None = None) -> float:
    """The training-curve area per epoch: the mean of a run's first ``epochs`` per-epoch
    training losses (all of them when ``epochs`` is None or 0); inf for an empty curve or
    one with a non-finite value (a run that diverged learns nothing)."""
    head = list(values)[:epochs] if epochs else list(values)
    if not head or not all(math.isfinite(v) for v in head):
        return math.inf
    return float(sum(head) / len(head))


def value_at_epoch(values: Sequence[float], epoch: int | None) -> float:
    """A run's per-epoch value at ``epoch`` (1-based; the last one when it stopped before,
    all of them when ``epoch`` is None or 0: the last); inf for an empty curve or a
    non-finite value (a diverged run)."""
    head = list(values)[:epoch] if epoch else list(values)
    value = head[-1] if head else math.inf
    return float(value) if math.isfinite(value) else math.inf


def proxy_tables(trials: pd.DataFrame, *, default_lr: float, momentum: float) -> dict[str,
                                                                                       pd.DataFrame]:
    """Score tables (lower is better) of every cheap proxy present in ``trials``.

    Besides one table per proxy run (``alrao``, ``alrao_momentum0.9``, ``adam``, ...):
    ``alrao_best_head`` (the best head's validation loss of the same Alrao runs), with a
    ``train_area`` column (:func:`curve_area`) ``alrao_train_area`` and
    ``alrao_val_plus_area`` (validation loss + training-curve area: a model that reaches
    a low loss fast scores better), with a ``val_at_epoch`` column ``alrao_at_epoch`` (the
    validation loss at a fixed epoch instead of the best epoch's), with two seeds or more
    ``alrao_draws2`` (the mean of two Alrao runs' scores: seed s and the next seed, two
    draws of the random rates at twice the cost), ``sgd_default`` from the grid when the
    default rate is a grid point, the rank ensemble of Alrao and Adam, and the parameter
    count.
    """
    out: dict[str, pd.DataFrame] = {}
    present = set(trials["proxy"]) - {"sgd"}
    for name in [*PROXY_ORDER, *sorted(present - set(PROXY_ORDER))]:
        rows = trials[trials["proxy"] == name]
        if len(rows):
            out[name] = _table(rows, _loss(rows))
    alrao = trials[trials["proxy"] == "alrao"]
    if len(alrao):
        out["alrao_best_head"] = _table(alrao, _loss(alrao, "best_best_head_val_loss"))
        if "train_area" in alrao and alrao["train_area"].notna().any():
            area = alrao["train_area"].where(np.isfinite(_loss(alrao)), math.inf).fillna(
                math.inf)
            out["alrao_train_area"] = _table(alrao, area)
            out["alrao_val_plus_area"] = _table(alrao, _loss(alrao) + area)
        if "val_at_epoch" in alrao and alrao["val_at_epoch"].notna().any():
            at = alrao["val_at_epoch"].where(np.isfinite(_loss(alrao)), math.inf)
            out["alrao_at_epoch"] = _table(alrao, at.fillna(math.inf))
        one = out["alrao"]
        if one.shape[1] >= 2:
            cols = list(one.columns)
            out["alrao_draws2"] = pd.DataFrame(
                {s: (one[s] + one[cols[(i + 1) % len(cols)]]) / 2 for i, s in enumerate(cols)})
    if "sgd_default" not in out:
        grid = grid_rows(trials, momentum)
        rows = grid[np.isclose(grid["lr"], default_lr)]
        if len(rows):
            out["sgd_default"] = _table(rows, _loss(rows))
    if "alrao" in out and "adam" in out:
        out["ensemble_alrao_adam"] = ranking.rank_ensemble([out["alrao"], out["adam"]])
    sizes = trials.groupby("arch")["n_params"].max()
    any_table = next(iter(out.values()), None)
    if any_table is not None:
        out["param_count"] = pd.DataFrame(
            {s: -sizes.reindex(any_table.index).astype(float) for s in any_table.columns})
    return out


def _mean_std(values: pd.Series) -> str:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return "diverged"
    text = f"{finite.mean():.3f} ± {finite.std(ddof=0):.3f}"
    return text + (f" ({len(values) - len(finite)} diverged)" if len(finite) < len(values) else "")


def table1(trials: pd.DataFrame, momentum: float) -> pd.DataFrame:
    """The paper's Table 1 layout per architecture: best SGD LR, its loss/accuracy; Adam; Alrao.

    Losses are best-epoch validation losses and accuracies test accuracies at that
    epoch, as ``mean ± std`` over seeds. ``sgd_best_lr`` is the geometric mean over seeds
    of each seed's best grid rate (``sgd_best_lr_per_seed`` lists them).
    """
    truth = truth_tables(trials, momentum)
    rows = []
    for arch in truth["val_loss"].index:
        best_lrs = truth["best_lr"].loc[arch].dropna()
        row = {"arch": arch, "n_params": int(trials.loc[trials["arch"] == arch, "n_params"].max()),
               "sgd_best_lr": _geo(best_lrs),  # geometric mean over seeds
               "sgd_best_lr_per_seed": " / ".join(f"{v:.3g}" for v in best_lrs),
               "sgd_val_loss": _mean_std(truth["val_loss"].loc[arch]),
               "sgd_val_acc": _mean_std(truth["val_acc"].loc[arch]),
               "sgd_test_acc": _mean_std(truth["test_acc"].loc[arch])}
        for proxy in ("adam", "alrao"):
            rows_p = trials[(trials["proxy"] == proxy) & (trials["arch"] == arch)]
            if len(rows_p):
                ok = np.isfinite(_loss(rows_p))
                row[f"{proxy}_val_loss"] = _mean_std(_loss(rows_p))
                for col, src in (("val_acc", "best_val_acc"), ("test_acc", "test_acc")):
                    row[f"{proxy}_{col}"] = _mean_std(rows_p[src].where(ok, -np.inf))
        alrao = trials[(trials["proxy"] == "alrao") & (trials["arch"] == arch)]
        if len(alrao):
            row["alrao_lr_eff"] = _geo(alrao["lr_eff"])
        rows.append(row)
    return pd.DataFrame(rows)


def _geo(values: pd.Series) -> float:
    v = [x for x in values if isinstance(x, (int, float)) and x > 0 and math.isfinite(x)]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else math.nan


def alrao_rates(trials: pd.DataFrame) -> pd.Series:
    """Alrao's effective learning rate per architecture (geometric mean over seeds)."""
    return trials[trials["proxy"] == "alrao"].groupby("arch")["lr_eff"].apply(_geo)


def compute_costs(trials: pd.DataFrame, momentum: float) -> pd.DataFrame:
    """Trial-seconds and epochs of each proxy vs the full grid (for one momentum)."""
    grid = grid_rows(trials, momentum)
    g_s, g_e = float(grid["time_total_s"].sum()), float(grid["epochs"].sum())
    rows = [{"proxy": "grid (truth)", "trial_seconds": g_s, "epochs": g_e, "share_of_grid": 1.0}]
    for proxy, group in trials[trials["proxy"] != "sgd"].groupby("proxy"):
        s = float(group["time_total_s"].sum())
        rows.append({"proxy": proxy, "trial_seconds": s, "epochs": float(group["epochs"].sum()),
                     "share_of_grid": s / g_s if g_s else math.nan})
    return pd.DataFrame(rows)


def pipeline_vs_grid(trials: pd.DataFrame, momentum: float, k: int,
                     proxy: str = "alrao", window: float | None = None) -> dict[str, float]:
    """The two-stage pipeline simulated on the grid's runs.

    Stage 1 keeps the proxy's top-``k`` architectures (seed-averaged score); stage 2 is
    taken as the grid itself on those ``k`` — all its rates, or with ``window`` only the
    rates within ``window`` decades of the architecture's Alrao effective rate (geometric
    mean over seeds): a stage 2 that trusts Alrao's rate. Per architecture and seed the
    best of those rates counts (validation loss); the pick is the architecture with the
    best seed-averaged loss, judged by its mean test accuracy at those rates. Returns the
    regret of the pick in test-accuracy points against the grid's best architecture (all
    rates) and the share of the full grid's trial-seconds the pipeline used.
    """
    truth = truth_tables(trials, momentum)
    tables = proxy_tables(trials, default_lr=math.nan, momentum=momentum)
    if proxy not in tables:
        return {}
    chosen = list(ranking.seed_average(tables[proxy]).sort_values(kind="stable").index[:k])
    truth_loss = ranking.seed_average(truth["val_loss"])
    acc = truth["test_acc"].mean(axis=1)
    grid = grid_rows(trials, momentum)
    stage2 = grid[grid["arch"].isin(chosen)]
    if window is not None:
        centre = np.log10(stage2["arch"].map(alrao_rates(trials)).astype(float))
        stage2 = stage2[(np.log10(stage2["lr"].astype(float)) - centre).abs() <= window + 1e-9]
    found = truth_tables(stage2, momentum) if len(stage2) else None
    if found is None or not len(found["val_loss"]):
        return {}
    found_loss = ranking.seed_average(found["val_loss"])
    pick = found_loss.idxmin()
    cost = (float(trials.loc[trials["proxy"] == proxy, "time_total_s"].sum())
            + float(stage2["time_total_s"].sum()))
    total = float(grid["time_total_s"].sum())
    best = truth_loss.idxmin()
    return {"k": k, "pick": pick, "grid_best": best,
            "regret_acc_points": 100 * float(acc.loc[best]
                                             - found["test_acc"].loc[pick].mean()),
            "share_of_grid": cost / total if total else math.nan}


def pipelines(trials: pd.DataFrame, momentum: float, ks: Sequence[int] = (1, 2, 3),
              windows: Sequence[float | None] = (None, 1.0)) -> pd.DataFrame:
    """:func:`pipeline_vs_grid` for every ``k`` (up to the number of architectures) and
    stage-2 ``window`` (None: the whole grid): columns ``k, stage2, pick, grid_best,
    regret_acc_points, share_of_grid``."""
    n = trials["arch"].nunique()
    rows = []
    for window in windows:
        for k in (k for k in ks if k <= n):
            got = pipeline_vs_grid(trials, momentum, k, window=window)
            if got:
                label = "whole grid" if window is None else f"±{window:g} decade of lr_eff"
                rows.append({"k": k, "stage2": label, **{c: got[c] for c in (
                    "pick", "grid_best", "regret_acc_points", "share_of_grid")}})
    return pd.DataFrame(rows, columns=["k", "stage2", "pick", "grid_best",
                                       "regret_acc_points", "share_of_grid"])


def lr_agreement(trials: pd.DataFrame, momentum: float) -> pd.DataFrame:
    """How far Alrao's effective rate lands from the grid's best rate (in decades)."""
    truth = truth_tables(trials, momentum)
    alrao = alrao_rates(trials)
    rows = []
    for arch in truth["best_lr"].index:
        best = _geo(truth["best_lr"].loc[arch])
        eff = float(alrao.get(arch, math.nan))
        rows.append({"arch": arch, "grid_best_lr": best, "alrao_lr_eff": eff,
                     "decades_off": math.log10(eff / best) if eff > 0 and best > 0 else math.nan})
    return pd.DataFrame(rows)


def scatter_data(proxy: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged proxy score vs seed-averaged truth per architecture (for the plot)."""
    return pd.DataFrame({"proxy": ranking.seed_average(proxy),
                         "truth": ranking.seed_average(truth)}).rename_axis("arch").reset_index()


def curves_data(records: Sequence[dict]) -> pd.DataFrame:
    """Long table ``arch, proxy, lr, epoch, val_loss`` for per-LR learning curves."""
    return pd.DataFrame.from_records(records, columns=["arch", "proxy", "lr", "epoch", "val_loss"])
