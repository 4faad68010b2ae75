"""Figures: a pure ``*_info`` function computes each figure's data (tested by equality),
a thin function draws it (matplotlib, headless).

The inputs are tables from :mod:`alrao_tune.report.screening` or
:mod:`alrao_tune.report.compare`. Readable whatever the data: the proxy-vs-truth scatter is
drawn rank against rank (one architecture far off cannot squash the others into a corner;
one row per rank, so labels cannot overlap), compute is on a logarithmic axis. Figures are
made without pyplot (``matplotlib.figure.Figure``): no backend is switched and no figure is
left open in the caller's process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def scatter_info(data: pd.DataFrame) -> pd.DataFrame:
    """The scatter's points: ``arch, truth_rank, proxy_rank, finite`` sorted by truth rank.

    Ranks are 1 = best (lowest loss); ties are broken by architecture name so that every
    rank, hence every label row, is used once; a diverged (infinite or NaN) score ranks
    last and is flagged ``finite=False`` (drawn hollow).
    """
    frame = data[["arch", "proxy", "truth"]].sort_values("arch", kind="stable").copy()
    finite = np.isfinite(frame["proxy"].astype(float)) & np.isfinite(frame["truth"].astype(float))
    for col in ("truth", "proxy"):
        values = frame[col].astype(float).where(lambda v: np.isfinite(v), np.inf)
        frame[f"{col}_rank"] = values.rank(method="first").astype(int)
    frame["finite"] = finite.to_numpy()
    out = frame[["arch", "truth_rank", "proxy_rank", "finite"]]
    return out.sort_values("truth_rank", kind="stable").reset_index(drop=True)


def scatter(data: pd.DataFrame, path: Path, fidelity: pd.DataFrame | None = None) -> Path:
    """Proxy rank against truth rank per architecture (``report_compare.scatter_data``):
    on the diagonal the proxy ranks like the truth."""
    info = scatter_info(data)
    n = max(len(info), 1)
    fig = _figure(figsize=(6.5, max(3.0, 0.32 * n + 1.2)), dpi=110)
    ax = fig.subplots()
    ax.plot([1, n], [1, n], color="0.7", lw=1, ls="--", zorder=0)
    ok = info[info["finite"]]
    ax.scatter(ok["truth_rank"], ok["proxy_rank"], s=22)
    bad = info[~info["finite"]]
    ax.scatter(bad["truth_rank"], bad["proxy_rank"], s=22, facecolors="none",
               edgecolors="C3", label="diverged")
    for row in info.itertuples():
        ax.annotate(row.arch, (row.truth_rank, row.proxy_rank), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_xlim(0.5, n + 0.5 + 0.25 * n)
    ax.set_ylim(n + 0.5, 0.5)  # rank 1 at the top
    ax.set_xlabel("truth rank: best SGD validation loss over the grid (seed mean)")
    ax.set_ylabel("Alrao rank (seed mean)")
    if len(bad):
        ax.legend(fontsize=7)
    if fidelity is not None and "alrao" in set(fidelity["proxy"]):
        row = fidelity[fidelity["proxy"] == "alrao"].iloc[0]
        ax.set_title(f"Alrao proxy vs grid: Kendall τ = {row['tau_avg']:.2f}, "
                     f"Spearman ρ = {row['rho_avg']:.2f}", fontsize=9)
    return _save(fig, path)


def compute_info(costs: pd.DataFrame) -> pd.DataFrame:
    """The compute figure's bars (``report_compare.compute_costs``): ``proxy,
    trial_seconds, share_of_grid``, cheapest first, proxies that cost nothing left out
    (a log axis cannot show 0)."""
    frame = costs[costs["trial_seconds"] > 0][["proxy", "trial_seconds", "share_of_grid"]]
    return frame.sort_values(["trial_seconds", "proxy"], kind="stable").reset_index(drop=True)


def compute(costs: pd.DataFrame, path: Path) -> Path:
    """Trial-seconds per proxy and of the full grid, on a logarithmic axis."""
    info = compute_info(costs)
    fig = _figure(figsize=(6, max(2.5, 0.3 * len(info) + 1)), dpi=110)
    ax = fig.subplots()
    ax.barh(info["proxy"], info["trial_seconds"], color="C0")
    for y, row in enumerate(info.itertuples()):
        ax.annotate(f"{100 * row.share_of_grid:.0f} % of the grid", (row.trial_seconds, y),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("trial-seconds (log scale)")
    ax.margins(x=0.3)
    return _save(fig, path)


def posterior_evolution(series: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Switch posterior per head over steps: a long table ``step, head, lr, posterior``."""
    fig = _figure(figsize=(6, 3.5), dpi=110)
    ax = fig.subplots()
    for (head, lr), group in series.groupby(["head", "lr"], sort=True):
        ax.plot(group["step"], group["posterior"], label=f"head {head} (lr {lr:.1e})", lw=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("switch posterior")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def learning_curves(curves: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Validation loss per epoch, one line per run (``arch, label, epoch, val_loss``)."""
    fig = _figure(figsize=(6, 3.5), dpi=110)
    ax = fig.subplots()
    for label, group in curves.groupby("label", sort=True):
        ax.plot(group["epoch"], group["val_loss"], label=str(label), lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def lr_curves(curves: pd.DataFrame, path: Path, columns: int = 4) -> Path:
    """The paper's Figure 2 per architecture: validation loss per epoch of SGD at every
    grid rate (one colour per rate) and of Alrao (black), from
    ``report_compare.curves_data`` (``arch, proxy, lr, epoch, val_loss``)."""
    import math

    from matplotlib import colormaps

    archs = sorted(curves["arch"].unique())
    rows = max(1, math.ceil(len(archs) / columns))
    cols = min(columns, max(1, len(archs)))
    fig = _figure(figsize=(3.2 * cols, 2.5 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    rates = sorted(curves.loc[curves["proxy"] != "alrao", "lr"].unique())
    cmap = colormaps["viridis"]
    for ax, arch in zip(axes.flat, archs, strict=False):
        mine = curves[curves["arch"] == arch]
        for (proxy, lr), group in mine.groupby(["proxy", "lr"], sort=True, dropna=False):
            finite = group[group["val_loss"].abs() < float("inf")].sort_values("epoch")
            if proxy == "alrao":
                ax.plot(finite["epoch"], finite["val_loss"], color="black", lw=1.8,
                        label="Alrao")
            else:
                colour = cmap(rates.index(lr) / max(1, len(rates) - 1))
                ax.plot(finite["epoch"], finite["val_loss"], color=colour, lw=1.0,
                        label=f"SGD {lr:.0e}")
        ax.set_yscale("log")
        first = mine.loc[mine["epoch"] == mine["epoch"].min(), "val_loss"]
        first = first[first.abs() < float("inf")]
        if len(first):  # a run blowing up (finite but huge) would flatten the rest
            ax.set_ylim(top=3 * float(first.median()))
        ax.set_title(arch, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(archs):]:
        ax.axis("off")
    if archs:
        axes.flat[0].legend(fontsize=5)
    fig.supxlabel("epoch", fontsize=8)
    fig.supylabel("validation loss", fontsize=8)
    return _save(fig, path)


def anytime_curves(points: pd.DataFrame, path: Path, target: float = 0.5) -> Path:
    """Regret (test-accuracy points) against compute (share of the grid's trial-seconds,
    log axis), one step line per strategy and repeat (``report.anytime.curve_points``)."""
    from matplotlib import rcParams

    fig = _figure(figsize=(6.5, 3.8), dpi=110)
    ax = fig.subplots()
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (strategy, group) in enumerate(points.groupby("strategy", sort=True)):
        for j, (_, rep) in enumerate(group.groupby("repeat", sort=True)):
            ax.step(rep["share"], rep["regret"], where="post", lw=1.2, alpha=0.8,
                    color=colours[i % len(colours)], label=str(strategy) if j == 0 else None)
    ax.axhline(target, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("compute (share of the grid's trial-seconds, one seed)")
    ax.set_ylabel("regret (test-accuracy points)")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Lays out and writes ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path)
    return path
