"""Views of a ``compare`` run for the dashboard: its ``compare.json`` and ``trials.csv``.

Read with :func:`load_compare`; the rest are pure functions returning the tables the
dashboard's Compare tab draws (tested by equality). The scatter is recomputed from
``trials.csv`` with :mod:`alrao_tune.report.compare`, exactly as ``compare`` draws it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alrao_tune.report import compare as report_compare
from alrao_tune.report.store import NoResultsError, artifact_text, frame_from_rows

if TYPE_CHECKING:
    from mlflow import MlflowClient

COMPARE_TABLES = ("table1", "fidelity", "costs", "pipelines", "lr_agreement")


@dataclass
class CompareData:
    """One ``compare`` run: its ``compare.json`` report and its ``trials.csv`` table."""

    run_id: str
    experiment_id: str
    report: dict[str, Any]
    trials: pd.DataFrame
    # per-epoch validation loss, first seed (``report_compare.curves_data``; empty for a
    # comparison made before ``curves.csv`` was logged)
    curves: pd.DataFrame = field(default_factory=lambda: report_compare.curves_data([]))


def load_compare(client: MlflowClient, run_id: str) -> CompareData:
    """Reads a compare run's ``compare.json`` and ``trials.csv`` artifacts.

    Raises:
        NoResultsError: the run has no report (it failed or is still running).
    """
    run = client.get_run(run_id)
    text = artifact_text(client, run_id, "compare.json")
    csv = artifact_text(client, run_id, "trials.csv")
    if text is None or csv is None:
        raise NoResultsError(f"compare run {run_id} ({run.info.status}) has no compare.json/"
                             "trials.csv: it failed or is still running; see the MLflow UI.")
    trials = pd.read_csv(io.StringIO(csv), keep_default_na=False, na_values=[""])
    curves = artifact_text(client, run_id, "curves.csv")
    return CompareData(run_id, run.info.experiment_id, json.loads(text), trials,
                       pd.read_csv(io.StringIO(curves)) if curves else
                       report_compare.curves_data([]))


def compare_curves(data: CompareData, momentum: str, arch: str) -> pd.DataFrame:
    """The paper's Figure 2 for one architecture: validation loss per epoch of SGD at every
    grid rate (the truth of ``momentum``) and of Alrao, first seed; columns ``epoch,
    val_loss, run`` (``run``: ``SGD lr=0.1`` or ``Alrao``), non-finite losses dropped."""
    c = data.curves
    mine = c[(c["arch"] == arch) & c["proxy"].isin(["alrao", f"sgd_m{float(momentum):g}"])]
    mine = mine[np.isfinite(mine["val_loss"].astype(float))]
    run = ["Alrao" if p == "alrao" else f"SGD lr={lr:g}" for p, lr in zip(mine["proxy"],
                                                                       mine["lr"])]
    return (mine.assign(run=run)[["epoch", "val_loss", "run"]]
            .sort_values(["run", "epoch"], kind="stable").reset_index(drop=True))


def compare_momenta(data: CompareData) -> list[str]:
    """The SGD momenta the ground truth was measured with (keys of ``by_momentum``)."""
    return list(data.report.get("by_momentum", {}))


def compare_table(data: CompareData, momentum: str, name: str) -> pd.DataFrame:
    """One table of the report: ``table1``, ``fidelity``, ``costs``, ``pipelines`` (empty for
    a comparison made before it existed) or ``lr_agreement``."""
    if name not in COMPARE_TABLES:
        raise ValueError(f"name must be one of {COMPARE_TABLES}, but got {name=}.")
    return frame_from_rows(data.report["by_momentum"][momentum].get(name, []))


def proxy_scatter(data: CompareData, momentum: str, proxy: str = "alrao") -> pd.DataFrame:
    """Seed-averaged proxy score against seed-averaged truth (best SGD over the grid).

    Returns:
        Columns ``arch, proxy, truth, finite`` (``finite`` False where a diverged run made
        a score infinite: such points cannot be drawn).
    """
    m = float(momentum)
    truth = report_compare.truth_tables(data.trials, m)["val_loss"]
    tables = report_compare.proxy_tables(data.trials, default_lr=math.nan, momentum=m)
    if proxy not in tables:
        return pd.DataFrame(columns=["arch", "proxy", "truth", "finite"])
    out = report_compare.scatter_data(tables[proxy], truth)
    out["finite"] = np.isfinite(out["proxy"]) & np.isfinite(out["truth"])
    return out


def rank_agreement(data: CompareData, momentum: str, proxy: str = "alrao") -> dict[str, Any]:
    """Kendall τ, Spearman ρ, top-k recall and regret of ``proxy`` against the truth,
    and the truth's own seed-to-seed τ (the noise ceiling)."""
    rep = data.report["by_momentum"][momentum]
    row: Mapping[str, Any] = next((r for r in rep["fidelity"] if r["proxy"] == proxy), {})
    ceiling = rep.get("noise_ceiling") or {}
    return {"tau": row.get("tau_avg"), "rho": row.get("rho_avg"),
            "topk_recall": row.get("topk_recall"), "k": row.get("k"),
            "regret": row.get("regret"), "noise_ceiling_tau": ceiling.get("tau_mean")}


def compute_saved(data: CompareData, momentum: str) -> dict[str, Any]:
    """The two-stage pipeline against the full grid: share of its trial-seconds used,
    regret in test-accuracy points, its pick and the grid's best architecture."""
    return dict(data.report["by_momentum"][momentum].get("pipeline") or {})


def strategy_tables(data: CompareData) -> dict[str, pd.DataFrame]:
    """The screening strategies of a comparison (empty dict when it ran none):
    ``targets`` (compute to the target regret per strategy), ``budgets`` (regret at fixed
    shares of the grid's trial-seconds) and ``points`` (the anytime curves: ``strategy,
    repeat, share, regret``, see :func:`alrao_tune.report.anytime.curve_points`)."""
    from alrao_tune.report import anytime

    rep = data.report.get("strategies")
    if not rep:
        return {}
    curves = frame_from_rows(rep.get("curves", []))
    points = (anytime.curve_points(curves, float(rep["grid"]["seconds"])) if len(curves)
              else pd.DataFrame(columns=["strategy", "repeat", "share", "regret"]))
    return {"targets": frame_from_rows(rep.get("targets", [])),
            "budgets": frame_from_rows(rep.get("budgets", [])), "points": points}


def stage2_method_table(data: CompareData) -> pd.DataFrame:
    """The stage-2 methods of a comparison (:mod:`alrao_tune.report.samplers`: per method,
    trials to land within 0.5 points of each architecture's best grid rate); empty when it
    measured none."""
    rep = data.report.get("stage2_methods") or {}
    return frame_from_rows(rep.get("table", []))
