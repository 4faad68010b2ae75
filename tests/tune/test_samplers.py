"""Stage 2's bracket search: its sequence by equality, and in a real Optuna study."""

from __future__ import annotations

import math

import optuna
import pytest

from alrao_tune.tune.samplers import BracketSampler, bracket_next, make_sampler


def lg(values):
    return [round(math.log10(v), 9) for v in values]


def test_before_any_result_the_ladder_steps_out_half_a_decade_each_side():
    tried = []
    for _ in range(5):
        tried.append((bracket_next(0.01, 1e-4, 1.0, tried), None))
    assert lg(lr for lr, _ in tried) == [-2.0, -1.5, -2.5, -1.0, -3.0]


def test_the_ladder_is_clipped_and_skips_rates_next_to_tried_ones():
    tried = []
    for _ in range(3):
        tried.append((bracket_next(0.96, 1e-4, 1.0, tried), None))
    # 0.96 + half a decade clips to 1.0, within 0.05 decades of 0.96: skipped
    assert lg(lr for lr, _ in tried) == lg([0.96, 0.96 / 10**0.5, 0.096])


def test_a_best_rate_at_the_edge_moves_the_search_downhill():
    tried = [(0.01, 0.5), (10**-1.5, 0.4), (10**-2.5, 0.6)]
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-1.0]
    tried.append((0.1, 0.3))
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-0.5]


def test_an_inner_best_rate_zooms_towards_its_better_neighbour_then_the_other_side():
    tried = [(0.01, 0.4), (10**-1.5, 0.5), (10**-2.5, 0.6)]
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-1.75]
    tried.append((10**-1.75, 0.45))
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-1.875]
    tried.append((10**-1.875, 0.42))
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-1.9375]
    tried.append((10**-1.9375, 0.41))
    # towards the better side every midpoint is now within 0.05 decades of a tried rate:
    # the other side's midpoint
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-2.25]


def test_an_unusable_anchor_starts_at_the_ranges_middle_and_failures_count_as_worst():
    assert lg([bracket_next(math.nan, 1e-4, 1.0, [])]) == [-2.0]
    tried = [(0.01, math.inf), (10**-1.5, 0.5), (10**-2.5, math.inf)]
    assert lg([bracket_next(0.01, 1e-4, 1.0, tried)]) == [-1.0]  # uphill from the only finite


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_in_an_optuna_study_it_finds_a_valley_in_six_trials(direction):
    best = 10**-1.2  # the objective's optimum: 0.3 decades away from the anchor (0.01 -> -2)
    sign = 1 if direction == "minimize" else -1

    def objective(trial):
        x = math.log10(trial.suggest_float("lr", 1e-4, 1.0, log=True))
        trial.suggest_float("momentum", 0.0, 0.9)  # drawn by the seeded random sampler
        return sign * (x - math.log10(best)) ** 2

    study = optuna.create_study(direction=direction,
                                sampler=BracketSampler(0.01, 1e-4, 1.0, seed=0))
    study.enqueue_trial({"lr": 0.01})
    study.optimize(objective, n_trials=6)
    xs = [math.log10(t.params["lr"]) for t in study.trials]
    assert xs[0] == -2.0 and round(xs[1], 9) == -1.5
    assert abs(math.log10(study.best_params["lr"]) - math.log10(best)) <= 0.15
    assert len({round(x, 6) for x in xs}) == 6  # never the same rate twice
    assert all(0.0 <= t.params["momentum"] <= 0.9 for t in study.trials)


def test_make_sampler_builds_each_kind_with_its_startup_trials():
    assert isinstance(make_sampler("tpe", seed=0, startup_trials=3), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("gp", seed=0), optuna.samplers.GPSampler)
    assert isinstance(make_sampler("random", seed=0), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler("bracket", seed=0, anchor=0.1), BracketSampler)
    with pytest.raises(ValueError, match="known: tpe, gp, random, bracket"):
        make_sampler("cmaes", seed=0)


def test_the_stage2_settings_build_the_searcher_and_the_per_architecture_asha():
    from alrao_tune.space import parse_space
    from alrao_tune.tune import stages
    from alrao_tune.tune.search import PerArchScheduler
    from tests.tune.test_screen import TINY

    space = parse_space({**TINY, "stage2": {**TINY["stage2"], "sampler": "bracket",
                                            "scheduler": "asha"}})
    searcher = stages.stage2_searcher(space, "best_val_loss", "min", (1e-3, 1.0), anchor=0.05)
    sampler = searcher._sampler
    assert isinstance(sampler, BracketSampler) and (sampler.anchor, sampler.high) == (0.05, 1.0)
    assert isinstance(stages.stage2_scheduler(space, "best_val_loss", "min"), PerArchScheduler)
    plain = parse_space({**TINY, "stage2": {**TINY["stage2"], "sampler": "tpe",
                                            "startup_trials": 2}})
    assert stages.stage2_scheduler(plain, "best_val_loss", "min") is None
    assert stages.stage2_searcher(plain, "best_val_loss", "min")._sampler._n_startup_trials == 2
