"""Tests of the switch model averaging (exactness against brute force, NaN safety, state)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alrao_tune.alrao.switch import Switch, benchmark_update


def _brute_force_predictive(nlls: list[list[float]], theta: float) -> list[float]:
    """P(expert of observation n+1 = k | x_1..x_n) by summing over every state sequence.

    States are (k, a) = k and (k, b) = K + k of the HMM described in ``switch.py``.
    """
    k_models = len(nlls[0]) if nlls else 0
    n = len(nlls)
    n_states = 2 * k_models

    def initial(s: int) -> float:
        return (theta if s < k_models else 1.0 - theta) / k_models

    def transition(s: int, s_next: int, t: int) -> float:
        pi = 1.0 / (t + 1)
        if s >= k_models:  # (k, b) never switches
            return 1.0 if s_next == s else 0.0
        restart = (theta if s_next < k_models else 1.0 - theta) / k_models
        return (1.0 - pi) * (s_next == s) + pi * restart

    weights = [0.0] * k_models
    for seq in itertools.product(range(n_states), repeat=n + 1):
        prob = initial(seq[0])
        for t in range(1, n + 1):  # observation t is emitted by state seq[t - 1]
            prob *= math.exp(-nlls[t - 1][seq[t - 1] % k_models])
            prob *= transition(seq[t - 1], seq[t], t)
        weights[seq[n] % k_models] += prob
    total = sum(weights)
    return [w / total for w in weights]


@pytest.mark.parametrize("n_models", [2, 3])
@pytest.mark.parametrize("theta", [0.999, 0.7])
def test_matches_brute_force_enumeration_of_the_hmm(n_models: int, theta: float) -> None:
    gen = torch.Generator().manual_seed(n_models)
    nlls = (torch.rand(4, n_models, generator=gen, dtype=torch.float64) * 3.0).tolist()
    switch = Switch(n_models, theta=theta, dtype=torch.float64)
    # before any observation: the prior, uniform over experts
    expected = [1.0 / n_models] * n_models
    torch.testing.assert_close(switch.posterior, torch.tensor(expected, dtype=torch.float64))
    for step in range(4):
        switch.update(torch.tensor(nlls[step], dtype=torch.float64))
        expected = _brute_force_predictive(nlls[: step + 1], theta)
        # the predictive posterior after each observation is exact
        torch.testing.assert_close(
            switch.posterior, torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0
        )


def _reference_update(logw: torch.Tensor, nll: torch.Tensor, t: int, theta: float) -> None:
    """Algorithm 1 written step by step in log space (the readable reference), in place."""
    k = logw.shape[1]
    loglik = torch.where(torch.isfinite(nll), -nll, -math.inf)
    new = logw + loglik
    pi = 1.0 / (t + 1)
    logpool = torch.logsumexp(new[0], 0) + math.log(pi)
    new[0] += math.log(1 - pi)
    new[0] = torch.logaddexp(new[0], math.log(theta) + logpool - math.log(k))
    new[1] = torch.logaddexp(new[1], math.log(1 - theta) + logpool - math.log(k))
    new -= torch.logsumexp(new.flatten(), 0)
    if torch.isfinite(new).all():  # all-non-finite step: keep the weights
        logw.copy_(new)


def test_fast_update_agrees_with_log_space_reference_over_many_steps() -> None:
    gen = torch.Generator().manual_seed(3)
    switch = Switch(6, theta=0.99, dtype=torch.float64)
    logw = switch.logw.clone()
    for t in range(1, 301):
        nll = torch.rand(6, generator=gen, dtype=torch.float64) * 4.0 * (1 + t % 3)
        if t % 50 == 0:
            nll[t % 6] = math.nan
        if t == 120:
            nll[:] = math.inf
        switch.update(nll)
        _reference_update(logw, nll, t, 0.99)
        # the linear-space mixing equals the log-space algorithm
        torch.testing.assert_close(switch.logw, logw, atol=1e-10, rtol=1e-10)


def test_posterior_always_sums_to_one() -> None:
    gen = torch.Generator().manual_seed(0)
    switch = Switch(10)
    for step in range(200):
        nll = torch.rand(10, generator=gen) * 5.0
        if step % 17 == 0:
            nll[step % 10] = math.nan
        switch.update(nll)
        # a probability vector over the heads at every step
        assert switch.posterior.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert torch.isfinite(switch.log_posterior).all()


def test_model_that_is_bad_early_and_good_late_takes_over() -> None:
    switch = Switch(2)
    for _ in range(20):
        switch.update(torch.tensor([0.1, 2.0]))
    # model 0 leads while it predicts better
    assert switch.posterior[0] > 0.95
    for _ in range(20):
        switch.update(torch.tensor([2.0, 0.1]))
    # the switch catches up: model 1 takes over within a few steps
    assert switch.posterior[1] > 0.95


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_nll_counts_as_infinite_loss(bad: float) -> None:
    switch, reference = Switch(3, dtype=torch.float64), Switch(3, dtype=torch.float64)
    for step in range(1, 11):
        switch.update(torch.tensor([0.5, bad, 1.0], dtype=torch.float64))
        reference.update(torch.tensor([0.5, math.inf, 1.0], dtype=torch.float64))
        post = switch.posterior
        # no NaN, still a probability vector
        assert torch.isfinite(post).all()
        assert post.sum().item() == pytest.approx(1.0, abs=1e-12)
        # the bad head keeps only what the switching pool gives back: <= pi_t / K
        assert post[1].item() <= 1.0 / ((step + 1) * 3) + 1e-12
        # any non-finite value is treated exactly like +inf
        torch.testing.assert_close(post, reference.posterior, atol=0, rtol=0)


def test_all_non_finite_leaves_the_posterior_unchanged() -> None:
    switch = Switch(4)
    switch.update(torch.tensor([0.3, 1.0, 2.0, 0.7]))
    before = switch.logw.clone()
    switch.update(torch.tensor([math.nan, math.inf, -math.inf, math.nan]))
    # weights untouched (no NaN), the step counter still advances
    assert torch.equal(switch.logw, before)
    assert int(switch.t) == 3
    switch.update(torch.tensor([0.3, 1.0, 2.0, 0.7]))
    assert torch.isfinite(switch.posterior).all()


def test_state_dict_round_trip_continues_identically() -> None:
    gen = torch.Generator().manual_seed(1)
    nlls = torch.rand(10, 5, generator=gen)
    a = Switch(5, theta=0.99)
    for row in nlls[:5]:
        a.update(row)
    state = a.state_dict()
    # only the persistent state: log weights and the step counter
    assert set(state) == {"logw", "t"}
    b = Switch(5, theta=0.99)
    b.load_state_dict(state)
    assert int(b.t) == 6
    for row in nlls[5:]:
        a.update(row)
        b.update(row)
    # identical continuation, including the step-dependent switching rate
    assert torch.equal(a.logw, b.logw)
    assert torch.equal(a.t, b.t)


def test_single_model_posterior_is_one() -> None:
    switch = Switch(1)
    for nll in (0.3, math.nan, 5.0):
        switch.update(torch.tensor([nll]))
        torch.testing.assert_close(switch.posterior, torch.ones(1))


def test_forward_averages_log_probabilities() -> None:
    switch = Switch(3, dtype=torch.float64)
    switch.update(torch.tensor([0.2, 1.5, 0.9], dtype=torch.float64))
    head_lp = torch.randn(4, 3, 5, dtype=torch.float64).log_softmax(-1)
    expected = (switch.posterior[:, None] * head_lp.exp()).sum(1).log()
    # log sum_k posterior_k p_k(y), expert axis at -2
    torch.testing.assert_close(switch(head_lp), expected)
    torch.testing.assert_close(switch(head_lp.transpose(1, 2), dim=-1), expected)


def test_update_does_not_track_gradients() -> None:
    switch = Switch(3)
    nll = torch.rand(3, requires_grad=True)
    switch.update(nll * 2)
    assert not switch.logw.requires_grad


@pytest.mark.parametrize("n_models", [0, -2, 2.5, True])
def test_rejects_bad_n_models(n_models: object) -> None:
    with pytest.raises(ValueError, match="n_models must be an integer >= 1"):
        Switch(n_models)  # type: ignore[arg-type]


@pytest.mark.parametrize("theta", [0.0, 1.0, -0.1, 1.5])
def test_rejects_theta_outside_the_open_unit_interval(theta: float) -> None:
    with pytest.raises(ValueError, match="theta must lie strictly between 0 and 1"):
        Switch(3, theta=theta)


def test_benchmark_update_returns_microseconds() -> None:
    assert benchmark_update(n_models=4, n=20) > 0.0


def test_update_under_autocast_stays_float32_exact() -> None:
    plain, autocast = Switch(4), Switch(4)
    nll = torch.tensor([0.3, 1.2, 0.8, 2.0])
    for _ in range(5):
        plain.update(nll)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast.update(nll)
    # the switching matmul is not downcast: bit-identical to the update without autocast
    assert autocast.logw.dtype == torch.float32
    assert torch.equal(autocast.logw, plain.logw)
