"""The figures' data functions, by equality; the drawings are smoke-tested (valid PNGs)."""

from __future__ import annotations

import math

import pandas as pd

from alrao_tune.report import figures

SCATTER = pd.DataFrame({
    "arch": ["c", "a", "far", "b", "nan"],
    "proxy": [0.30, 0.10, 1e6, 0.20, math.inf],
    "truth": [0.25, 0.20, 50.0, 0.20, 0.9],
})


def test_scatter_info_is_rank_against_rank():
    got = figures.scatter_info(SCATTER)
    want = pd.DataFrame({
        # truth ties (a, b at 0.20) are broken by name, so every rank is used once
        "arch": ["a", "b", "c", "nan", "far"],
        "truth_rank": [1, 2, 3, 4, 5],
        # the far-off architecture is just rank 4, not a point 10^6 away; the diverged
        # one ranks last and is flagged
        "proxy_rank": [1, 2, 3, 5, 4],
        "finite": [True, True, True, False, True],
    })
    pd.testing.assert_frame_equal(got, want)
    # one label row per rank: no two labels share a row, so none overlap
    assert got["proxy_rank"].is_unique


def test_compute_info_drops_zero_cost_and_sorts_cheapest_first():
    costs = pd.DataFrame({"proxy": ["grid (truth)", "alrao", "adam", "free"],
                          "trial_seconds": [400.0, 20.0, 60.0, 0.0],
                          "epochs": [1.0, 1.0, 1.0, 0.0],
                          "share_of_grid": [1.0, 0.05, 0.15, 0.0]})
    got = figures.compute_info(costs)
    want = pd.DataFrame({"proxy": ["alrao", "adam", "grid (truth)"],
                         "trial_seconds": [20.0, 60.0, 400.0],
                         "share_of_grid": [0.05, 0.15, 1.0]})
    pd.testing.assert_frame_equal(got, want)


def test_figures_draw(tmp_path):
    png = b"\x89PNG\r\n\x1a\n"
    path = figures.scatter(SCATTER, tmp_path / "scatter.png")
    assert path.read_bytes()[:8] == png
    costs = pd.DataFrame({"proxy": ["grid (truth)", "alrao"], "trial_seconds": [400.0, 20.0],
                          "epochs": [1.0, 1.0], "share_of_grid": [1.0, 0.05]})
    assert figures.compute(costs, tmp_path / "compute.png").read_bytes()[:8] == png
