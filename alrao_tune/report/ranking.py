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

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "kendall_tau", "rank_ensemble", "regret", "seed_average", "spearman_rho", "to_ranks",
    "top1_agreement", "top_k_recall",
]

Frame = TypeVar("Frame", pd.Series, pd.DataFrame)



def check_mode(mode: str, name: str = "mode") -> None:
    """Raises ValueError unless ``mode`` is ``min`` or ``max``."""
    if mode not in ("min", "max"):
        raise ValueError(f"{name} must be 'min' or 'max', but got {name}={mode!r}.")


def _as_badness(values: np.ndarray, mode: str) -> np.ndarray:
    """Lower-is-better float copy: negated when ``mode='max'``; every non-finite -> +inf."""
    check_mode(mode)
    x = np.array(values, dtype=float)
    x = -x if mode == "max" else x
    x[~np.isfinite(x)] = np.inf
    return x


def badness(values: Frame, mode: str) -> Frame:
    """:func:`_as_badness` of a Series or DataFrame, keeping its labels."""
    if isinstance(values, pd.DataFrame):
        bad = _as_badness(values.to_numpy(), mode).reshape(values.shape)
        return pd.DataFrame(bad, index=values.index, columns=values.columns)
    return pd.Series(_as_badness(values.to_numpy(), mode), index=values.index, name=values.name)


def align_labels(labels: pd.Index, other: Frame, name: str) -> Frame:
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
    b = align_labels(a.index, b, "b")
    return _as_badness(a.to_numpy(), mode), _as_badness(b.to_numpy(), mode)


def to_ranks(series: pd.Series, mode: str = "min") -> pd.Series:
    """Float average ranks of a score vector (1 = best); failures share the worst rank."""
    return badness(series, mode).rank(method="average")


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
    mean = badness(table, mode).mean(axis=1)  # +inf propagates
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
    check_mode(proxy_mode, "proxy_mode")
    metric = align_labels(proxy.index, truth_metric, "truth_metric")
    p = badness(proxy, proxy_mode).to_numpy()
    m = badness(metric, mode).to_numpy()
    finite = np.isfinite(m)
    if not finite.any():
        return math.nan
    return float(m[p == p.min()].mean() - m[finite].min())


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
        aligned = align_labels(first.index, table, f"tables[{i}]")[list(first.columns)]
        ranks.append(badness(aligned, mode).rank(axis=0, method="average"))
    return sum(ranks[1:], ranks[0]) / len(ranks)
