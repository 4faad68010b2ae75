"""Figures drawn from the pure report functions' tables (matplotlib, headless).

Nothing here computes: every function takes a table produced by
:mod:`alrao_tune.report.screening` or :mod:`alrao_tune.report.compare` and only draws it.
Figures are made without pyplot (``matplotlib.figure.Figure``): no backend is switched and
no figure is left open in the caller's process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def scatter(data: pd.DataFrame, path: Path, fidelity: pd.DataFrame | None = None) -> Path:
    """Proxy score vs ground truth per architecture (``report_compare.scatter_data``)."""
    fig = _figure(figsize=(5.5, 4.5), dpi=110)
    ax = fig.subplots()
    finite = data[data["proxy"].abs() < float("inf")]
    ax.scatter(finite["truth"], finite["proxy"], s=22)
    for row in finite.itertuples():
        ax.annotate(row.arch, (row.truth, row.proxy), fontsize=7, alpha=0.8)
    ax.set_xlabel("truth: best SGD validation loss over the grid (seed mean)")
    ax.set_ylabel("Alrao validation loss (seed mean)")
    if fidelity is not None and "alrao" in set(fidelity["proxy"]):
        row = fidelity[fidelity["proxy"] == "alrao"].iloc[0]
        ax.set_title(f"Alrao proxy vs grid: Kendall τ = {row['tau_avg']:.2f}, "
                     f"Spearman ρ = {row['rho_avg']:.2f}", fontsize=9)
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
