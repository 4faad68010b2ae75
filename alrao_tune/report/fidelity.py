"""Uncertainty of a proxy's ranking: bootstrap intervals, the truth's noise ceiling, and the
per-proxy fidelity table of ``alrao-tune compare`` (built on :mod:`alrao_tune.report.ranking`,
whose conventions apply: score tables, ``mode``, failures as non-finite values).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from alrao_tune.report.ranking import (
    align_labels,
    badness,
    check_mode,
    kendall_tau,
    regret,
    seed_average,
    spearman_rho,
    top1_agreement,
    top_k_recall,
)

__all__ = ["FIDELITY_COLUMNS", "bootstrap_ci", "fidelity", "noise_ceiling"]

Stat = Callable[[pd.Series, pd.Series], float]

FIDELITY_COLUMNS = (
    "proxy", "tau_same_seed", "tau_same_seed_low", "tau_same_seed_high", "n_seeds",
    "tau_avg", "tau_avg_ci_low", "tau_avg_ci_high", "rho_avg", "rho_avg_ci_low",
    "rho_avg_ci_high", "top1", "k", "topk_recall", "regret", "n_archs",
)
MAX_SPLITS = 500  # split-half: enumerate every split up to this many, else sample this many


def _tau_rho_fast(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Fast path of (tau-b, rho) on badness arrays, for bootstrap loops (O(n^2) memory).

    With ``dx[i, j] = sign(x_i - x_j)`` (inf == inf is a tie): tau-b = sum(dx * dy) /
    sqrt(sum|dx| * sum|dy|) (each pair counted twice on both sides); the average rank of i
    is ``#{x_j < x_i} + (#{x_j == x_i} + 1) / 2``. Tested equal to the scipy path.
    """
    dx = (x[:, None] > x).astype(np.int64) - (x[:, None] < x)
    dy = (y[:, None] > y).astype(np.int64) - (y[:, None] < y)
    tx, ty = np.abs(dx).sum(), np.abs(dy).sum()
    if tx == 0 or ty == 0:
        return math.nan, math.nan
    rx = (dx == 1).sum(axis=1) + ((dx == 0).sum(axis=1) + 1) / 2
    ry = (dy == 1).sum(axis=1) + ((dy == 0).sum(axis=1) + 1) / 2
    rx, ry = rx - rx.mean(), ry - ry.mean()
    rho = (rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry))
    return float((dx * dy).sum() / math.sqrt(tx * ty)), float(rho)


def _resamples(
    proxy: pd.DataFrame, truth: pd.DataFrame, n_boot: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Bootstrap draws of (seed-averaged proxy, truth) badness arrays (rows aligned).

    Seeds are resampled (the same labels in both tables when their seed sets are equal);
    architectures (rows, the same in both) when either table has a single seed.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, but got {n_boot=}.")
    rng = np.random.default_rng(seed)
    paired = set(proxy.columns) == set(truth.columns)
    pv = proxy.to_numpy()
    tv = truth[list(proxy.columns)].to_numpy() if paired else truth.to_numpy()
    n_arch, n_p, n_t = pv.shape[0], pv.shape[1], tv.shape[1]
    pm, tm = pv.mean(axis=1), tv.mean(axis=1)
    for _ in range(n_boot):
        if min(n_p, n_t) < 2:
            rows = rng.integers(0, n_arch, n_arch)
            yield pm[rows], tm[rows]
        else:
            cp = rng.integers(0, n_p, n_p)
            ct = cp if paired else rng.integers(0, n_t, n_t)
            yield pv[:, cp].mean(axis=1), tv[:, ct].mean(axis=1)


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the non-NaN draws (NaN, NaN if there are none)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), but got {level=}.")
    finite = draws[~np.isnan(draws)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_ci(
    proxy_table: pd.DataFrame, truth_table: pd.DataFrame, stat: Stat, *, n_boot: int = 1000,
    seed: int = 0, level: float = 0.95, mode: str = "min",
) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``stat(seed-averaged proxy, seed-averaged truth)``.

    Each draw resamples the seed columns with replacement, averages each table over the
    drawn seeds (a failed drawn seed makes the architecture failed), and evaluates
    ``stat``. If both tables have the same seed labels, the same labels are drawn for both
    (a paired bootstrap); otherwise each table's seeds are drawn independently. If either
    table has a single seed, seed resampling would show no variability, so architectures
    (rows, the same rows in both) are resampled instead; duplicated rows act as ties.
    Draws where ``stat`` is NaN (e.g. a constant resample) are left out of the interval.

    Args:
        proxy_table: proxy score table.
        truth_table: truth score table over the same architectures.
        stat: ``f(proxy, truth) -> float`` on score vectors that are lower-is-better
            (negated when ``mode='max'``, failures ``+inf``), e.g. :func:`kendall_tau`.
        n_boot, level: number of draws, coverage of the interval.
        seed: seed of the NumPy generator (same seed, same result).
        mode: direction of both tables.

    Returns:
        ``(point, low, high)``; the point estimate uses all seeds.
    """
    truth = badness(truth_table, mode)
    proxy = badness(align_labels(truth.index, proxy_table, "proxy_table"), mode)
    point = stat(proxy.mean(axis=1), truth.mean(axis=1))
    index = pd.RangeIndex(len(truth)) if min(proxy.shape[1], truth.shape[1]) < 2 else truth.index
    draws = np.array([stat(pd.Series(a, index=index), pd.Series(b, index=index))
                      for a, b in _resamples(proxy, truth, n_boot, seed)], dtype=float)
    return (float(point), *_percentile_interval(draws, level))


def _nan_summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of the non-NaN values; NaNs if there are none."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    return float(np.mean(finite)), float(min(finite)), float(max(finite))


def _half_splits(n: int, seed: int = 0) -> Iterator[tuple[int, ...]]:
    """First halves (size ``n // 2``) of the split-half partitions of ``range(n)``."""
    half = n // 2
    combos = itertools.combinations(range(n), half)
    if n % 2 == 0:  # {A, B} == {B, A}: keep the halves that contain seed 0
        combos = (c for c in combos if c[0] == 0)
    count = math.comb(n, half) // (2 if n % 2 == 0 else 1)
    if count <= MAX_SPLITS:
        yield from combos
        return
    rng = np.random.default_rng(seed)
    for _ in range(MAX_SPLITS):
        yield tuple(sorted(rng.permutation(n)[:half].tolist()))


def noise_ceiling(truth_table: pd.DataFrame, *, mode: str = "min") -> dict[str, float]:
    """The ground truth's own seed-to-seed rank agreement: a ceiling for any proxy.

    ``tau_mean/min/max`` summarise Kendall's tau-b over all pairs of seed columns; compare
    them with a proxy's same-seed tau. ``split_half_tau`` is the mean tau between the
    averages of two disjoint halves of the seeds (sizes ``n // 2`` and the rest), over every
    split (or ``MAX_SPLITS`` random ones). Each half averages only about n/2 seeds, so it
    understates how reproducible the full n-seed average is.

    Returns:
        ``n_seeds, n_pairs, tau_mean, tau_min, tau_max, n_splits, split_half_tau`` (taus are
        NaN with fewer than 2 seeds).
    """
    bad = badness(truth_table, mode)
    n = bad.shape[1]
    pairs = itertools.combinations(range(n), 2)
    taus = [kendall_tau(bad.iloc[:, i], bad.iloc[:, j]) for i, j in pairs]
    mean, low, high = _nan_summary(taus)
    splits = list(_half_splits(n)) if n >= 2 else []
    halves = [
        kendall_tau(bad.iloc[:, list(a)].mean(axis=1),
                    bad.iloc[:, [j for j in range(n) if j not in a]].mean(axis=1))
        for a in splits
    ]
    return {"n_seeds": n, "n_pairs": len(taus), "tau_mean": mean, "tau_min": low,
            "tau_max": high, "n_splits": len(splits), "split_half_tau": _nan_summary(halves)[0]}


def _fidelity_row(
    proxy: pd.DataFrame, truth: pd.DataFrame, metric: pd.Series | None, metric_mode: str,
    k: int, n_boot: int, seed: int,
) -> dict[str, object]:
    """One row of :func:`fidelity` from badness tables (rows aligned with ``truth``)."""
    seeds = [s for s in proxy.columns if s in truth.columns]
    same = _nan_summary([kendall_tau(proxy[s], truth[s]) for s in seeds])
    draws = np.array([_tau_rho_fast(a, b) for a, b in _resamples(proxy, truth, n_boot, seed)])
    tau_ci = _percentile_interval(draws[:, 0], 0.95)
    rho_ci = _percentile_interval(draws[:, 1], 0.95)
    pm, tm = proxy.mean(axis=1), truth.mean(axis=1)
    k_used = min(k, len(tm))
    return {
        "tau_same_seed": same[0], "tau_same_seed_low": same[1], "tau_same_seed_high": same[2],
        "n_seeds": len(seeds), "tau_avg": kendall_tau(pm, tm),
        "tau_avg_ci_low": tau_ci[0], "tau_avg_ci_high": tau_ci[1],
        "rho_avg": spearman_rho(pm, tm), "rho_avg_ci_low": rho_ci[0],
        "rho_avg_ci_high": rho_ci[1], "top1": top1_agreement(pm, tm), "k": k_used,
        "topk_recall": top_k_recall(pm, tm, k_used),
        "regret": math.nan if metric is None else regret(pm, metric, mode=metric_mode),
        "n_archs": len(tm),
    }


def fidelity(
    proxy_tables: Mapping[str, pd.DataFrame], truth_table: pd.DataFrame,
    truth_metric_table: pd.DataFrame | None, *, k: int = 3, mode: str = "min",
    metric_mode: str = "max", n_boot: int = 1000, seed: int = 0,
) -> pd.DataFrame:
    """One row per proxy: how well it ranks the architectures against the truth.

    Columns (``FIDELITY_COLUMNS``): ``proxy``; ``tau_same_seed`` = mean over the common
    seeds s of tau(proxy[s], truth[s]), with ``tau_same_seed_low/high`` its min/max and
    ``n_seeds`` the number of common seeds; ``tau_avg`` / ``rho_avg`` = tau / rho of the
    seed-averaged proxy vs the seed-averaged truth, with 95 % bootstrap intervals
    ``*_ci_low/high`` (see :func:`bootstrap_ci`; every proxy uses the same ``seed``, so the
    proxies see the same resampled seeds); ``top1`` (:func:`top1_agreement`), ``k`` and
    ``topk_recall`` (:func:`top_k_recall`; k is clipped to ``n_archs``), ``regret`` of the
    seed-averaged proxy's pick on the seed-averaged ``truth_metric_table`` (NaN if None),
    ``n_archs``. Sorted by ``tau_avg`` descending (NaN last), then by name.

    Args:
        proxy_tables: proxy name -> score table over the truth's architectures.
        truth_table: ground-truth score table (e.g. best validation loss of the SGD grid).
        truth_metric_table: table of the metric that judges the pick (e.g. test accuracy).
        k: size of the top set for ``topk_recall``.
        mode, metric_mode: direction of the proxy and truth tables, of the metric table.
        n_boot, seed: bootstrap draws per proxy and the generator's seed.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, but got {k=}.")
    check_mode(metric_mode, "metric_mode")
    truth = badness(truth_table, mode)
    if len(truth) == 0:
        raise ValueError("fidelity: truth_table has no architectures.")
    metric = None
    if truth_metric_table is not None:
        aligned = align_labels(truth.index, truth_metric_table, "truth_metric_table")
        metric = seed_average(aligned, metric_mode)
    rows = []
    for name, table in proxy_tables.items():
        proxy = badness(align_labels(truth.index, table, f"proxy_tables[{name!r}]"), mode)
        row = _fidelity_row(proxy, truth, metric, metric_mode, k, n_boot, seed)
        rows.append({"proxy": name, **row})
    frame = pd.DataFrame(rows, columns=list(FIDELITY_COLUMNS))
    frame = frame.sort_values(["tau_avg", "proxy"], ascending=[False, True],
                              na_position="last", kind="stable")
    return frame.reset_index(drop=True)
