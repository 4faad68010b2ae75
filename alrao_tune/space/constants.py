"""Known names a search space may use: datasets, zoo families, schedules (defined once in
:mod:`alrao_tune.schema`), the paper's LR grid."""

from __future__ import annotations

from alrao_tune.schema import (
    DATASETS,
    FAMILIES,
    LR_FREE_METHODS,
    PATH_DATASETS,
    SCHEDULE_OPTIONS,
    STAGE1_PROXIES,
    STRATEGIES,
)

__all__ = ["DATASETS", "FAMILIES", "LR_FREE_METHODS", "PAPER_LR_GRID", "PATH_DATASETS",
           "SCHEDULE_OPTIONS", "STAGE1_PROXIES", "STRATEGIES", "STRATEGY_NAMES"]
# every name ``compare.strategies`` accepts
STRATEGY_NAMES = (*STRATEGIES, *(f"two_stage_{p}" for p in STAGE1_PROXIES))

PAPER_LR_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_RESERVED_ARCH_KEYS = ("name", "family", "builder")
