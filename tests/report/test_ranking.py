"""Tests of alrao_tune.report.ranking and .fidelity: hand-computed rank statistics, ties,
failures, bootstrap."""

from __future__ import annotations

import math
import string

import numpy as np
import pandas as pd
import pytest

from alrao_tune.report.fidelity import (
    FIDELITY_COLUMNS,
    _tau_rho_fast,
    bootstrap_ci,
    fidelity,
    noise_ceiling,
)
from alrao_tune.report.ranking import (
    kendall_tau,
    rank_ensemble,
    regret,
    seed_average,
    spearman_rho,
    to_ranks,
    top1_agreement,
    top_k_recall,
)

INF, NAN = math.inf, math.nan
LETTERS = string.ascii_lowercase  # architecture names a, b, c, ...


def vec(values: list[float], names: list[str] | None = None) -> pd.Series:
    """A score vector over architectures a, b, c, ..."""
    return pd.Series(values, index=names or list(LETTERS[: len(values)]), dtype=float)


def table(columns: dict[int, list[float]], names: list[str] | None = None) -> pd.DataFrame:
    """A score table: one column per seed."""
    n = len(next(iter(columns.values())))
    return pd.DataFrame(columns, index=names or list(LETTERS[:n]), dtype=float)


# ---------------------------------------------------------------- tau and rho

# (a, b, hand-computed tau-b, hand-computed rho)
CORRELATION_CASES = [
    pytest.param([1, 2, 3, 4], [10, 20, 30, 40], 1.0, 1.0, id="perfect"),
    pytest.param([1, 2, 3, 4], [40, 30, 20, 10], -1.0, -1.0, id="reversed"),
    # 5 concordant, 1 discordant pair of 6: (5 - 1) / 6; rho = 1 - 6 * 2 / (4 * 15)
    pytest.param([1, 2, 3, 4], [1, 2, 4, 3], 4 / 6, 0.8, id="one-swap"),
    # pair (a, b) tied in a only: n_c=5, n_d=0, n_0=6, n_1=1 -> 5 / sqrt(5 * 6);
    # rho = Pearson of ranks (1.5, 1.5, 3, 4) and (1, 2, 3, 4) = 4.5 / sqrt(4.5 * 5)
    pytest.param([1, 1, 2, 3], [1, 2, 3, 4], 5 / math.sqrt(30), math.sqrt(0.9), id="ties"),
    # diverged c ranks last in both: a perfect agreement
    pytest.param([0.1, 0.2, INF, 0.3], [0.5, 0.6, NAN, 0.7], 1.0, 1.0, id="diverged-both"),
    # two failures tie in a: same tau-b as the "ties" case, mirrored at the bottom
    pytest.param([1, 2, INF, NAN], [1, 2, 3, 4], 5 / math.sqrt(30), math.sqrt(0.9),
                 id="failures-tie"),
]


@pytest.mark.parametrize(("a", "b", "tau", "rho"), CORRELATION_CASES)
def test_correlations_match_hand_computed(a, b, tau, rho) -> None:
    assert kendall_tau(vec(a), vec(b)) == pytest.approx(tau, abs=1e-12)
    assert spearman_rho(vec(a), vec(b)) == pytest.approx(rho, abs=1e-12)


def test_correlations_max_mode_and_negation_agree() -> None:
    acc_a, acc_b = vec([0.9, 0.8, -INF, 0.7]), vec([0.95, 0.85, 0.5, NAN])
    # accuracies: a and b agree on a > b; -inf and NaN are failures
    expected = kendall_tau(-acc_a, -acc_b)
    assert kendall_tau(acc_a, acc_b, mode="max") == expected
    # b ranks c (0.5) above the failed d, a ranks c (-inf) last: one discordant pair
    assert expected == pytest.approx(4 / 6)


def test_correlations_align_by_label() -> None:
    a = vec([1, 2, 3], ["x", "y", "z"])
    b = vec([3, 2, 1], ["z", "y", "x"])  # same scores, listed in reverse
    assert kendall_tau(a, b) == 1.0
    assert spearman_rho(a, b) == 1.0


@pytest.mark.parametrize(("a", "b"), [
    pytest.param([1.0], [2.0], id="one-item"),
    pytest.param([], [], id="empty"),
    pytest.param([1, 1, 1], [1, 2, 3], id="constant"),
    pytest.param([INF, NAN, INF], [1, 2, 3], id="all-failed"),
])
def test_correlations_undefined_are_nan(a, b) -> None:
    assert math.isnan(kendall_tau(vec(a), vec(b)))
    assert math.isnan(spearman_rho(vec(a), vec(b)))


def test_mismatched_architectures_raise() -> None:
    with pytest.raises(ValueError, match=r"missing \['c'\], extra \['d'\]"):
        kendall_tau(vec([1, 2, 3]), vec([1, 2, 3], ["a", "b", "d"]))


def test_bad_mode_raises() -> None:
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        kendall_tau(vec([1, 2]), vec([1, 2]), mode="best")


@pytest.mark.parametrize("n", [2, 5, 13])
def test_fast_path_equals_scipy_path(n) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        # few distinct values -> many ties; some failures (+inf)
        x = rng.integers(0, 4, n).astype(float)
        y = rng.integers(0, 4, n).astype(float)
        x[rng.random(n) < 0.2] = INF
        tau, rho = _tau_rho_fast(x, y)
        for fast, ref in ((tau, kendall_tau(vec(x), vec(y))),
                          (rho, spearman_rho(vec(x), vec(y)))):
            # both NaN (constant input) or equal to rounding
            assert (math.isnan(fast) and math.isnan(ref)) or fast == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------- ranks and seed averages

@pytest.mark.parametrize(("values", "mode", "ranks"), [
    ([0.3, NAN, 0.1, INF], "min", [2, 3.5, 1, 3.5]),
    ([0.9, 0.8, NAN], "max", [1, 2, 3]),
    ([0.9, -INF, 0.9], "max", [1.5, 3, 1.5]),
])
def test_to_ranks(values, mode, ranks) -> None:
    assert to_ranks(vec(values), mode).tolist() == ranks


def test_seed_average_failed_seed_fails_arch() -> None:
    t = table({0: [1.0, 1.0, 2.0], 1: [3.0, INF, NAN]})
    assert seed_average(t).tolist() == [2.0, INF, INF]
    # accuracies: a failure is the worst value, -inf
    assert seed_average(t, "max").tolist() == [2.0, -INF, -INF]


# ---------------------------------------------------------------- top-k, top-1, regret

@pytest.mark.parametrize(("proxy", "truth", "k", "recall"), [
    # top-3 {a, b, c} vs {a, b, d}
    ([1, 2, 3, 4, 5], [1, 2, 4, 3, 5], 3, 2 / 3),
    # c and d tie for truth's 3rd place: truth's set is {a, b, c, d}, proxy's {a, b, d}
    ([1, 2, 5, 3, 4], [1, 2, 3, 3, 5], 3, 1.0),
    # proxy ties c, d at its 3rd place: {a, b} + one of {c (hit), d (miss)}: (2 + 1/2) / 3
    ([1, 2, 3, 3, 5], [1, 2, 3, 4, 5], 3, 2.5 / 3),
    ([1, 2, 3], [3, 2, 1], 1, 0.0),
    ([1, 2, 3], [3, 2, 1], 3, 1.0),
    # the failed arch is last for both, so top-2 agree
    ([1, 2, INF], [2, 1, NAN], 2, 1.0),
])
def test_top_k_recall(proxy, truth, k, recall) -> None:
    assert top_k_recall(vec(proxy), vec(truth), k) == pytest.approx(recall, abs=1e-12)


@pytest.mark.parametrize("k", [0, 4])
def test_top_k_recall_bad_k(k) -> None:
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        top_k_recall(vec([1, 2, 3]), vec([1, 2, 3]), k)


@pytest.mark.parametrize(("proxy", "truth", "agree"), [
    ([1, 2, 3], [1, 3, 2], True),
    ([2, 1, 3], [1, 3, 2], False),
    # the truth ties a and b for best: picking b agrees
    ([2, 1, 3], [1, 1, 2], True),
    # the proxy ties a and b, only a is truly best: not agreement whatever the tie-break
    ([1, 1, 3], [1, 2, 3], False),
    ([INF, 1, 2], [NAN, 1, 2], True),
])
def test_top1_agreement(proxy, truth, agree) -> None:
    assert top1_agreement(vec(proxy), vec(truth)) is agree


@pytest.mark.parametrize(("proxy", "metric", "mode", "expected"), [
    ([1, 2, 3], [90, 95, 80], "max", 5.0),  # picks a (90), best b (95)
    ([2, 1, 3], [90, 95, 80], "max", 0.0),  # picks the best
    ([1, 2, 3], [3.0, 2.0, 5.0], "min", 1.0),  # test loss 3 vs best 2
    ([3, 1, 2], [3.0, 2.0, 5.0], "min", 0.0),
    ([1, 1, 3], [90, 80, 95], "max", 10.0),  # tied picks a, b: mean 85 vs 95
    ([1, 2, 3], [NAN, 95, 80], "max", INF),  # the pick failed on the metric
    ([1, 2, 3], [NAN, -INF, NAN], "max", NAN),  # no finite metric at all
])
def test_regret(proxy, metric, mode, expected) -> None:
    got = regret(vec(proxy), vec(metric), mode=mode)
    assert got == expected or (math.isnan(expected) and math.isnan(got))


def test_regret_proxy_mode_max() -> None:
    # the proxy is an accuracy: its pick is b (0.9)
    assert regret(vec([0.5, 0.9, 0.1]), vec([90, 95, 80]), mode="max", proxy_mode="max") == 0.0


# ---------------------------------------------------------------- bootstrap

def _noisy_pair(n_seeds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(1)
    base = np.linspace(0.1, 1.0, 6)[:, None]
    truth = base + 0.15 * rng.standard_normal((6, n_seeds))
    proxy = base + 0.3 * rng.standard_normal((6, n_seeds))
    cols = list(range(n_seeds))
    return (pd.DataFrame(proxy, index=list("abcdef"), columns=cols),
            pd.DataFrame(truth, index=list("abcdef"), columns=cols))


def test_bootstrap_ci_contains_point_and_is_deterministic() -> None:
    proxy, truth = _noisy_pair(4)
    result = bootstrap_ci(proxy, truth, kendall_tau, n_boot=60, seed=3)
    # the point estimate uses all seeds
    assert result[0] == kendall_tau(seed_average(proxy), seed_average(truth))
    assert result[1] <= result[0] <= result[2]
    assert result == bootstrap_ci(proxy, truth, kendall_tau, n_boot=60, seed=3)


def test_bootstrap_ci_max_mode_equals_negated_min_mode() -> None:
    proxy, truth = _noisy_pair(3)
    as_max = bootstrap_ci(-proxy, -truth, spearman_rho, n_boot=30, mode="max")
    assert as_max == bootstrap_ci(proxy, truth, spearman_rho, n_boot=30)


def test_bootstrap_ci_single_seed_resamples_architectures() -> None:
    proxy, truth = _noisy_pair(1)
    point, low, high = bootstrap_ci(proxy, truth, kendall_tau, n_boot=60)
    # resampling the one seed could not vary; resampling architectures does
    assert low < high
    assert low <= point <= high
    assert (point, low, high) == bootstrap_ci(proxy, truth, kendall_tau, n_boot=60)


def test_bootstrap_ci_is_paired_over_seeds() -> None:
    truth = table({0: [1, 2, 3, 4], 1: [4, 3, 2, 1], 2: [2, 1, 4, 3]})
    # a proxy that is exactly 10x the truth on every seed agrees on every paired resample
    assert bootstrap_ci(10 * truth, truth, kendall_tau, n_boot=60) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- noise ceiling

def test_noise_ceiling_three_seeds() -> None:
    truth = table({0: [1, 2, 3, 4], 1: [1, 2, 4, 3], 2: [2, 1, 4, 3]})
    ceiling = noise_ceiling(truth)
    # pairwise taus by hand: (0,1) one swap 4/6, (0,2) two swaps 2/6, (1,2) one swap 4/6
    assert ceiling["tau_mean"] == pytest.approx((4 / 6 + 2 / 6 + 4 / 6) / 3)
    assert ceiling["tau_min"] == pytest.approx(2 / 6)
    assert ceiling["tau_max"] == pytest.approx(4 / 6)
    assert (ceiling["n_seeds"], ceiling["n_pairs"], ceiling["n_splits"]) == (3, 3, 3)
    # split-half with 3 seeds: each seed vs the mean of the other two
    halves = [kendall_tau(truth[i], truth.drop(columns=i).mean(axis=1)) for i in range(3)]
    assert ceiling["split_half_tau"] == pytest.approx(np.mean(halves))


def test_noise_ceiling_two_seeds_split_half_is_the_pair() -> None:
    ceiling = noise_ceiling(table({0: [1, 2, 3, 4], 1: [1, 2, 4, 3]}))
    assert ceiling["split_half_tau"] == ceiling["tau_mean"] == pytest.approx(4 / 6)


def test_noise_ceiling_one_seed_is_nan() -> None:
    ceiling = noise_ceiling(table({0: [1, 2, 3]}))
    assert ceiling["n_pairs"] == 0
    assert math.isnan(ceiling["tau_mean"]) and math.isnan(ceiling["split_half_tau"])


# ---------------------------------------------------------------- fidelity

def test_fidelity_tiny_example() -> None:
    truth = table({0: [1, 2, 3, 4], 1: [1, 3, 2, 4]})
    acc = table({0: [95, 90, 85, 80], 1: [93, 92, 83, 78]})
    proxies = {"reversed": -truth, "perfect": 10 * truth}
    got = fidelity(proxies, truth, acc, k=2, n_boot=50)
    expected = pd.DataFrame([
        # perfect: 10x truth per seed, paired bootstrap -> tau 1 on every resample
        ["perfect", 1.0, 1.0, 1.0, 2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, True, 2, 1.0, 0.0, 4],
        # reversed: picks d (mean acc 79) instead of a (94): regret 15. Seed-averaged truth
        # (1, 2.5, 2.5, 4) ties b, c at 2nd, so its top-2 is {a, b, c}; the proxy's is d plus
        # one of the tied b, c (both hits): recall (0 + 1) / 2
        ["reversed", -1.0, -1.0, -1.0, 2, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, False, 2, 0.5,
         15.0, 4],
    ], columns=list(FIDELITY_COLUMNS))
    pd.testing.assert_frame_equal(got, expected)


def test_fidelity_clips_k_and_allows_no_metric() -> None:
    truth = table({0: [1, 2, 3], 1: [1, 2, 3]})
    got = fidelity({"p": truth}, truth, None, k=5, n_boot=10)
    # k is clipped to the 3 architectures, so recall is trivially 1
    assert (got.loc[0, "k"], got.loc[0, "topk_recall"]) == (3, 1.0)
    assert math.isnan(got.loc[0, "regret"])


def test_fidelity_uses_common_seeds_only() -> None:
    truth = table({0: [1, 2, 3], 1: [1, 3, 2]})
    proxy = table({1: [1, 3, 2], 7: [3, 2, 1]})
    row = fidelity({"p": proxy}, truth, None, n_boot=10).iloc[0]
    # only seed 1 is shared, and it agrees perfectly
    assert (row["n_seeds"], row["tau_same_seed"]) == (1, 1.0)


def test_fidelity_proxy_missing_arch_raises() -> None:
    truth = table({0: [1, 2, 3]})
    with pytest.raises(ValueError, match=r"proxy_tables\['p'\].*missing \['c'\]"):
        fidelity({"p": truth.iloc[:2]}, truth, None)


# ---------------------------------------------------------------- rank ensemble

def test_rank_ensemble_of_identical_tables_is_their_ranks() -> None:
    t = table({0: [0.3, 0.1, INF], 1: [0.2, 0.2, 0.5]})
    expected = table({0: [2.0, 1.0, 3.0], 1: [1.5, 1.5, 3.0]})
    pd.testing.assert_frame_equal(rank_ensemble([t, t]), expected)


def test_rank_ensemble_averages_ranks_and_aligns() -> None:
    loss = table({0: [0.1, 0.2, 0.3]})
    acc = table({0: [0.7, 0.9, 0.8]}).iloc[::-1]  # listed in another order
    # one mode covers all tables, so an accuracy proxy joins a loss proxy negated
    got = rank_ensemble([loss, -acc])
    # loss ranks (a, b, c) = (1, 2, 3), accuracy (3, 1, 2): means (2, 1.5, 2.5), in loss's order
    assert got[0].tolist() == [2.0, 1.5, 2.5]


def test_rank_ensemble_mismatched_seeds_raise() -> None:
    with pytest.raises(ValueError, match="tables\\[1\\] has seeds"):
        rank_ensemble([table({0: [1, 2]}), table({1: [1, 2]})])
