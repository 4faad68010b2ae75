"""How well a cheap proxy ranks architectures against the ground truth (pure statistics).

Conventions shared by every function:

* A *score table* is a DataFrame indexed by architecture name with one column per seed; a
  *score vector* is a Series indexed by architecture name.
* ``mode="min"`` (the default) means lower is better (losses); ``mode="max"`` means higher
  is better (accuracies). Everything is converted internally to a lower-is-better
  "badness" (accuracies are negated).
* Any non-finite value (NaN, +inf, -inf) is a failed or diverged run. It ranks worse than
  every finite value, and failures tie with each other. Treating every non-finite value
  alike makes negation safe: ``-inf`` accuracy and ``+inf`` loss both mean "failed".
* Two vectors are aligned by label; their label sets must be equal (a missing
  architecture is an error, never silently dropped).

Ranks are "average" ranks (ties share the mean of their positions; 1 = best). The
correlations are Kendall's tau-b (Kendall 1945), ``(n_c - n_d) / sqrt((n_0 - n_1)(n_0 -
n_2))`` over the ``n_0`` pairs with ``n_1`` / ``n_2`` pairs tied in either vector, and
Spearman's rho (Pearson correlation of the average ranks), both from ``scipy.stats``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "FIDELITY_COLUMNS", "bootstrap_ci", "fidelity", "kendall_tau", "noise_ceiling",
    "rank_ensemble", "regret", "seed_average", "spearman_rho", "to_ranks", "top1_agreement",
    "top_k_recall",
]

Stat = Callable[[pd.Series, pd.Series], float]
Frame = TypeVar("Frame", pd.Series, pd.DataFrame)

FIDELITY_COLUMNS = (
    "proxy", "tau_same_seed", "tau_same_seed_low", "tau_same_seed_high", "n_seeds",
    "tau_avg", "tau_avg_ci_low", "tau_avg_ci_high", "rho_avg", "rho_avg_ci_low",
    "rho_avg_ci_high", "top1", "k", "topk_recall", "regret", "n_archs",
)
MAX_SPLITS = 500  # split-half: enumerate every split up to this many, else sample this many


def _check_mode(mode: str, name: str = "mode") -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"{name} must be 'min' or 'max', but got {name}={mode!r}.")


def _as_badness(values: np.ndarray, mode: str) -> np.ndarray:
    """Lower-is-better float copy: negated when ``mode='max'``; every non-finite -> +inf."""
    _check_mode(mode)
    x = np.array(values, dtype=float)
    x = -x if mode == "max" else x
    x[~np.isfinite(x)] = np.inf
    return x


def _badness(values: Frame, mode: str) -> Frame:
    """:func:`_as_badness` of a Series or DataFrame, keeping its labels."""
    if isinstance(values, pd.DataFrame):
        bad = _as_badness(values.to_numpy(), mode).reshape(values.shape)
        return pd.DataFrame(bad, index=values.index, columns=values.columns)
    return pd.Series(_as_badness(values.to_numpy(), mode), index=values.index, name=values.name)


def _align(labels: pd.Index, other: Frame, name: str) -> Frame:
    """``other`` reordered to ``labels``; the label sets must be equal and unique."""
    if other.index.equals(labels) and not labels.has_duplicates:
        return other
    if labels.has_duplicates or other.index.has_duplicates:
        raise ValueError(f"{name}: architecture names must be unique.")
    missing = sorted(map(str, labels.difference(other.index)))
    extra = sorted(map(str, other.index.difference(labels)))
    if missing or extra:
        raise ValueError(
            f"{name} does not cover the same architectures: missing {missing[:5]}, "
            f"extra {extra[:5]}. Pass vectors/tables over the same architectures."
        )
    return other.reindex(labels)


def _paired(a: pd.Series, b: pd.Series, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Aligned badness arrays of two score vectors."""
    b = _align(a.index, b, "b")
    return _as_badness(a.to_numpy(), mode), _as_badness(b.to_numpy(), mode)


def to_ranks(series: pd.Series, mode: str = "min") -> pd.Series:
    """Float average ranks of a score vector (1 = best); failures share the worst rank."""
    return _badness(series, mode).rank(method="average")


def seed_average(table: pd.DataFrame, mode: str = "min") -> pd.Series:
    """Mean over seeds per architecture; one failed seed makes the architecture failed.

    An architecture that diverges on any seed is unreliable, so it ranks last (its mean is
    ``+inf`` for ``mode='min'``, ``-inf`` for ``mode='max'``) rather than being averaged
    over its surviving seeds, which would favour it by survivorship.

    Args:
        table: score table (architectures x seeds).
        mode: ``min`` or ``max``.

    Returns:
        The seed-averaged score vector, in the table's own orientation.
    """
    if table.shape[1] == 0:
        raise ValueError("seed_average: the table has no seed columns.")
    mean = _badness(table, mode).mean(axis=1)  # +inf propagates
    return -mean if mode == "max" else mean


def _ranks_or_none(a: pd.Series, b: pd.Series, mode: str) -> tuple[np.ndarray, ...] | None:
    """Average ranks of two aligned vectors; None when a correlation is undefined."""
    x, y = _paired(a, b, mode)
    if len(x) < 2:
        return None
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return rx, ry


def kendall_tau(a: pd.Series, b: pd.Series, *, mode: str = "min") -> float:
    """Kendall's tau-b between two score vectors (ties and failures handled; see module).

    Returns:
        tau-b in [-1, 1]; NaN if fewer than 2 architectures or either vector is constant
        (after failures are mapped to a common worst value).
    """
    ranks = _ranks_or_none(a, b, mode)
    return math.nan if ranks is None else float(sps.kendalltau(*ranks).statistic)


def spearman_rho(a: pd.Series, b: pd.Series, *, mode: str = "min") -> float:
    """Spearman's rho (Pearson correlation of average ranks) between two score vectors.

    Returns:
        rho in [-1, 1]; NaN if fewer than 2 architectures or either vector is constant.
    """
    ranks = _ranks_or_none(a, b, mode)
    return math.nan if ranks is None else float(sps.spearmanr(*ranks).statistic)


def _expected_overlap(scores: np.ndarray, hits: np.ndarray, k: int) -> float:
    """Expected ``|top-k of scores ∩ hits|`` with ties at the k-th place broken at random."""
    kth = np.sort(scores)[k - 1]
    strict, tied = scores < kth, scores == kth
    n_from_tied = k - int(strict.sum())
    return float(hits[strict].sum() + n_from_tied * hits[tied].sum() / tied.sum())


def top_k_recall(proxy: pd.Series, truth: pd.Series, k: int, *, mode: str = "min") -> float:
    """Share of the proxy's top k that lie in the truth's top k.

    Ties are treated asymmetrically, on purpose:

    * the truth's top-k set includes every architecture tied with its k-th best (so a
      proxy is not penalised for picking one of several equally good architectures);
    * the proxy's pick has exactly k members: when the proxy ties at its k-th place, the
      result is the expectation over breaking those ties uniformly at random.

    Hence the result is in [0, 1]: ``E|P_k ∩ T_k| / k``.

    Raises:
        ValueError: if k is not in ``[1, number of architectures]``.
    """
    p, t = _paired(proxy, truth, mode)
    if not 1 <= k <= len(p):
        raise ValueError(f"k must be in [1, {len(p)}] (the number of architectures), got {k=}.")
    truth_top = t <= np.sort(t)[k - 1]
    return _expected_overlap(p, truth_top, k) / k


def top1_agreement(proxy: pd.Series, truth: pd.Series, *, mode: str = "min") -> bool:
    """Whether the proxy's best architecture is a true best.

    If the truth ties for best, picking any of them agrees; if the proxy ties for best,
    every one of its tied picks must be a true best (agreement whatever the tie-break).
    """
    p, t = _paired(proxy, truth, mode)
    if len(p) == 0:
        return False
    return bool((t[p == p.min()] == t.min()).all())


def regret(
    proxy: pd.Series, truth_metric: pd.Series, *, mode: str, proxy_mode: str = "min"
) -> float:
    """How much of ``truth_metric`` is lost by trusting the proxy's top pick (>= 0).

    ``mode='max'`` (e.g. test accuracy): ``best - metric[pick]``; ``mode='min'`` (e.g. test
    loss): ``metric[pick] - best``. The best is over finite metric values. If the proxy
    ties for best, the regret is the mean over its tied picks (random tie-break).

    Args:
        proxy: proxy score vector (direction ``proxy_mode``, default ``min``: losses).
        truth_metric: the metric that judges the pick (direction ``mode``).

    Returns:
        The regret; ``+inf`` if the pick failed on the metric (non-finite), NaN if no
        architecture has a finite metric.
    """
    _check_mode(proxy_mode, "proxy_mode")
    metric = _align(proxy.index, truth_metric, "truth_metric")
    p = _badness(proxy, proxy_mode).to_numpy()
    m = _badness(metric, mode).to_numpy()
    finite = np.isfinite(m)
    if not finite.any():
        return math.nan
    return float(m[p == p.min()].mean() - m[finite].min())


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
    truth = _badness(truth_table, mode)
    proxy = _badness(_align(truth.index, proxy_table, "proxy_table"), mode)
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
    bad = _badness(truth_table, mode)
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
    _check_mode(metric_mode, "metric_mode")
    truth = _badness(truth_table, mode)
    if len(truth) == 0:
        raise ValueError("fidelity: truth_table has no architectures.")
    metric = None
    if truth_metric_table is not None:
        aligned = _align(truth.index, truth_metric_table, "truth_metric_table")
        metric = seed_average(aligned, metric_mode)
    rows = []
    for name, table in proxy_tables.items():
        proxy = _badness(_align(truth.index, table, f"proxy_tables[{name!r}]"), mode)
        row = _fidelity_row(proxy, truth, metric, metric_mode, k, n_boot, seed)
        rows.append({"proxy": name, **row})
    frame = pd.DataFrame(rows, columns=list(FIDELITY_COLUMNS))
    frame = frame.sort_values(["tau_avg", "proxy"], ascending=[False, True],
                              na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def rank_ensemble(tables: Sequence[pd.DataFrame], *, mode: str = "min") -> pd.DataFrame:
    """A "rank ensemble" proxy: per seed, the mean of the proxies' average ranks.

    Each table is ranked within each seed column (1 = best, failures tied last), and the
    ranks are averaged across tables. The result is lower-is-better whatever ``mode``, and
    finite: a failure in one proxy only gives that proxy's worst rank.

    Args:
        tables: score tables with the same architectures and seed columns (any order; the
            result has the first table's index and columns).
        mode: direction of every input table.
    """
    if not tables:
        raise ValueError("rank_ensemble needs at least one table.")
    first = tables[0]
    ranks = []
    for i, table in enumerate(tables):
        if set(table.columns) != set(first.columns):
            raise ValueError(f"tables[{i}] has seeds {list(table.columns)}, "
                             f"but tables[0] has {list(first.columns)}.")
        aligned = _align(first.index, table, f"tables[{i}]")[list(first.columns)]
        ranks.append(_badness(aligned, mode).rank(axis=0, method="average"))
    return sum(ranks[1:], ranks[0]) / len(ranks)
