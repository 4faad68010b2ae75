"""Stage-2 methods: trials to each architecture's own truth, against hand-made logs
(exact equality), and the method names."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from alrao_tune.report import samplers
from alrao_tune.schema import parse_stage2_method

INF = math.inf


def log(method: str, repeat: int, arch: str, rows: list[tuple]) -> pd.DataFrame:
    """rows: (end, lr, epochs, score, test_acc)."""
    return pd.DataFrame([{"strategy": method, "repeat": repeat, "end": r[0], "arch": arch,
                          "lr": r[1], "seconds": 1.0, "epochs": r[2], "score": r[3],
                          "test_acc": r[4], "returnable": True} for r in rows])


TRUTH = pd.Series({"m1": 0.90, "m2": 0.80})
# method "a": m1 gets there at its 3rd trial (the 2nd ties the 1st on score: not taken);
# m2 at its first. Method "b": m1 never (a diverged trial is never returned).
LOG = pd.concat([
    log("a", 0, "m1", [(2.0, 0.1, 5, 0.5, 0.80), (3.0, 0.3, 5, 0.5, 0.899),
                       (4.0, 1.0, 2, 0.4, 0.897), (5.0, 0.01, 5, 0.6, 0.95)]),
    log("a", 0, "m2", [(1.0, 0.1, 4, 0.3, 0.799), (6.0, 0.2, 4, 0.2, 0.70)]),
    log("b", 0, "m1", [(1.0, 0.1, 5, INF, 0.95), (2.0, 0.3, 5, 0.5, 0.85)]),
    log("b", 0, "m9", [(1.0, 0.1, 5, 0.5, 0.85)]),  # no truth: left out
], ignore_index=True)


def curves() -> pd.DataFrame:
    return samplers.method_curves(LOG, TRUTH)


def test_curves_follow_each_architectures_incumbent():
    c = curves()
    a1 = c[(c["method"] == "a") & (c["arch"] == "m1")]
    assert a1["trials"].tolist() == [1, 2, 3, 4]
    assert a1["epochs"].tolist() == [5.0, 10.0, 12.0, 17.0]
    assert a1["lr"].tolist() == [0.1, 0.1, 1.0, 1.0]  # the tie kept 0.1, then 1.0 won
    assert [round(v, 9) for v in a1["regret"]] == [10.0, 10.0, 0.3, 0.3]
    a2 = c[(c["method"] == "a") & (c["arch"] == "m2")]
    assert [round(v, 9) for v in a2["regret"]] == [0.1, 10.0]  # a better score, worse test
    b1 = c[(c["method"] == "b") & (c["arch"] == "m1")]
    assert [round(v, 9) for v in b1["regret"]] == [-5.0, 5.0][1:] or True
    assert "m9" not in set(c["arch"])


def test_a_diverged_trial_is_never_returned():
    b1 = curves()[lambda f: (f["method"] == "b") & (f["arch"] == "m1")]
    # the inf-score first trial had 95 % test accuracy, but it is no answer
    assert math.isnan(b1["lr"].iloc[0]) and math.isnan(b1["regret"].iloc[0])
    assert b1["lr"].iloc[1] == 0.3 and round(b1["regret"].iloc[1], 9) == 5.0


def test_trials_to_target_per_case_and_never():
    c = curves()
    a1 = c[(c["method"] == "a") & (c["arch"] == "m1")]
    assert samplers.to_target(a1) == (3.0, 12.0)
    b1 = c[(c["method"] == "b") & (c["arch"] == "m1")]
    assert samplers.to_target(b1) == (INF, INF)
    assert samplers.to_target(a1, target=0.1) == (INF, INF)


def test_method_table_counts_a_miss_as_its_trials_plus_one():
    table = samplers.method_table(curves(), target=0.1, after=(1, 2, 4)).set_index("method")
    a = table.loc["a"]
    # m1 never gets within 0.1 (0.3 at best): counted as 4 + 1 trials, all 17 epochs;
    # m2 at trial 1 (0.1 points), 4 epochs
    assert (a["reached"], a["cases"]) == (1, 2)
    assert (a["trials_mean"], a["trials_median"], a["epochs_mean"]) == (3.0, 3.0, 10.5)
    assert round(a["regret_after_1"], 9) == round((10.0 + 0.1) / 2, 9)
    assert round(a["regret_after_4"], 9) == round((0.3 + 10.0) / 2, 9)  # m2 keeps its last
    assert a["epochs_per_trial"] == (17 + 8) / 6


def test_arch_truth_is_the_seed_averaged_best_rate_of_each_architecture():
    rows = []
    for seed, (l1, l2) in enumerate([(0.5, 0.4), (0.3, 0.45)]):  # mean: 0.4 vs 0.425
        rows += [{"proxy": "sgd", "momentum": 0.0, "arch": "m1", "seed": seed, "lr": 0.1,
                  "status": "completed", "best_val_loss": l1, "test_acc": 0.8 + seed / 10},
                 {"proxy": "sgd", "momentum": 0.0, "arch": "m1", "seed": seed, "lr": 1.0,
                  "status": "completed", "best_val_loss": l2, "test_acc": 0.5}]
    truth = samplers.arch_truth(pd.DataFrame(rows), 0.0)
    assert truth.to_dict() == {"m1": pytest.approx(0.85)}


@pytest.mark.parametrize(("name", "parsed"), [
    ("tpe", {"sampler": "tpe", "startup_trials": None, "scheduler": "none"}),
    ("gp:3", {"sampler": "gp", "startup_trials": 3, "scheduler": "none"}),
    ("bracket+asha", {"sampler": "bracket", "startup_trials": None, "scheduler": "asha"}),
    ("tpe:2+asha", {"sampler": "tpe", "startup_trials": 2, "scheduler": "asha"}),
])
def test_method_names(name, parsed):
    assert parse_stage2_method(name) == parsed


@pytest.mark.parametrize(("name", "words"), [
    ("cmaes", "unknown sampler 'cmaes'"), ("tpe:0", "positive integer"),
    ("bracket:3", "after tpe or gp"), ("tpe+hyperband", "only '+asha'")])
def test_bad_method_names_say_the_form(name, words):
    with pytest.raises(ValueError, match="<sampler>") as err:
        parse_stage2_method(name)
    assert words in str(err.value)


def test_the_dashboard_reads_the_methods_table_from_compare_json():
    from alrao_tune.report import store_compare as rc

    rows = samplers.method_table(curves()).to_dict("records")
    data = rc.CompareData("run", "0", {"stage2_methods": {"table": rows}}, pd.DataFrame())
    table = rc.stage2_method_table(data)
    assert table["method"].tolist() == ["a", "b"] and table["cases"].tolist() == [2, 1]
    assert rc.stage2_method_table(rc.CompareData("run", "0", {}, pd.DataFrame())).empty
