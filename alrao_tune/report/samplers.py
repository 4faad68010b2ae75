"""How many stage-2 trials each method needs to find an architecture's rate (pure, tested by
equality; issue 14 item 4).

A *method* is a stage-2 configuration (``tpe``, ``tpe:3``, ``gp:3``, ``bracket``,
``bracket+asha``, ...: sampler, startup trials, scheduler;
:func:`alrao_tune.schema.parse_stage2_method`). Its *log*
has the columns of :data:`alrao_tune.report.anytime.LOG_COLUMNS`, with ``strategy`` = the
method: one row per stage-2 trial, every architecture of the zoo tuned by its own study,
started from the architecture's Alrao effective rate.

Per (method, repeat, architecture), after its n-th trial ended, the method would return its
trial with the lowest score so far (ties: the earlier one). The *regret* is
``100 * (arch_acc - test_acc)``: the gap in test-accuracy points to the architecture's own
truth (:func:`arch_truth`, its best grid rate, seed-averaged), so it measures how well the
method finds the rate, whatever the architecture. *Trials to target*: the first n with
regret <= 0.5 points (``inf`` if never within the trials it had).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from alrao_tune.report.anytime import TARGET
from alrao_tune.report.compare import _loss, grid_rows
from alrao_tune.schema import parse_stage2_method as parse_method  # noqa: F401 (re-export)

CURVE_COLUMNS = ("method", "repeat", "arch", "trials", "epochs", "lr", "regret")


def arch_truth(trials: pd.DataFrame, momentum: float) -> pd.Series:
    """Per architecture, the mean test accuracy over seeds at its best grid rate, the rate
    with the lowest seed-averaged best validation loss (ties: the lower rate)."""
    grid = grid_rows(trials, momentum).assign(loss=lambda f: _loss(f))
    by_rate = grid.groupby(["arch", "lr"]).agg(loss=("loss", "mean"),
                                               test_acc=("test_acc", "mean")).reset_index()
    best = by_rate.sort_values(["arch", "loss", "lr"]).groupby("arch").head(1)
    return best.set_index("arch")["test_acc"].astype(float).sort_index()


def method_curves(log: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    """One row per trial of each (method, repeat, arch) of ``log``, in the order the trials
    ended: cumulative ``trials`` and ``epochs`` of that architecture, the rate it would
    return then and its ``regret`` against ``truth[arch]`` (NaN until a trial with a finite
    score ended; architectures without a truth are left out)."""
    rows = []
    for (method, repeat, arch), group in log.groupby(["strategy", "repeat", "arch"],
                                                     sort=True):
        if arch not in truth.index:
            continue
        epochs, incumbent = 0.0, None
        for n, row in enumerate(group.sort_values("end", kind="stable").itertuples(), 1):
            epochs += float(row.epochs)
            if math.isfinite(row.score) and (incumbent is None or row.score < incumbent.score):
                incumbent = row  # a diverged or failed trial (score inf) is never returned
            rows.append({"method": method, "repeat": repeat, "arch": arch, "trials": n,
                         "epochs": epochs, "lr": math.nan if incumbent is None else incumbent.lr,
                         "regret": math.nan if incumbent is None else
                         100.0 * (float(truth[arch]) - float(incumbent.test_acc))})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def to_target(curve: pd.DataFrame, target: float = TARGET) -> tuple[float, float]:
    """(trials, epochs) at which one (method, repeat, arch) curve first has regret <=
    ``target``; (inf, inf) if it never does."""
    hit = curve[curve["regret"] <= target + 1e-12]
    if not len(hit):
        return math.inf, math.inf
    return float(hit["trials"].iloc[0]), float(hit["epochs"].iloc[0])


def method_table(curves: pd.DataFrame, target: float = TARGET,
                 after: Sequence[int] = (1, 2, 3, 4, 6)) -> pd.DataFrame:
    """Per method, over every (architecture, repeat): ``reached`` of ``cases`` got within
    ``target``; the mean and median trials (and mean epochs) to get there, counting a case
    that never did as its trials + 1 (its epochs: all it ran; a lower bound, said by
    ``reached``); the mean regret after 1, 2, ... trials (``after``, up to the most trials
    any case had; a case with fewer
    trials keeps its last value; one with no answer yet is left out) and the mean epochs
    per trial."""
    rows = []
    for method, group in curves.groupby("method", sort=False):
        cases = [c for _, c in group.groupby(["repeat", "arch"], sort=True)]
        hits = [to_target(c, target) for c in cases]
        trials = [n if math.isfinite(n) else float(c["trials"].iloc[-1]) + 1
                  for (n, _), c in zip(hits, cases)]
        epochs = [e if math.isfinite(e) else float(c["epochs"].iloc[-1])
                  for (_, e), c in zip(hits, cases)]
        row: dict[str, Any] = {
            "method": method, "reached": sum(math.isfinite(n) for n, _ in hits),
            "cases": len(cases), "trials_mean": float(np.mean(trials)),
            "trials_median": float(np.median(trials)), "epochs_mean": float(np.mean(epochs))}
        most = int(group["trials"].max())
        for n in [n for n in after if n <= most] or [most]:
            got = [v for c in cases if math.isfinite(v := c["regret"].iloc[min(n, len(c)) - 1])]
            row[f"regret_after_{n}"] = float(np.mean(got)) if got else math.nan
        row["epochs_per_trial"] = float(group.groupby(["repeat", "arch"])["epochs"].max().sum()
                                        / group.groupby(["repeat", "arch"])["trials"].max().sum())
        rows.append(row)
    return pd.DataFrame(rows)


def method_report(log: pd.DataFrame, trials: pd.DataFrame, momentum: float) -> dict[str, Any]:
    """``truth`` (per-arch test accuracy), ``curves`` and ``table`` of the methods in ``log``."""
    truth = arch_truth(trials, momentum)
    curves = method_curves(log, truth)
    return {"truth": truth.rename("test_acc").reset_index(), "curves": curves,
            "table": method_table(curves)}


def methods_markdown(rep: dict[str, Any]) -> str:
    """The stage-2 methods' table as markdown."""
    return ("### Stage-2 methods: trials to land within 0.5 points of each architecture's "
            "best grid rate\n\n" + rep["table"].to_markdown(index=False, floatfmt=".3g")
            + "\n")
