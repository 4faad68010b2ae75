"""Known names a search space may use: datasets, zoo families, schedules (defined once in
:mod:`alrao_tune.schema`), the paper's LR grid."""

from __future__ import annotations

from alrao_tune.schema import DATASETS, FAMILIES, PATH_DATASETS, SCHEDULE_OPTIONS

__all__ = ["DATASETS", "FAMILIES", "PAPER_LR_GRID", "PATH_DATASETS", "SCHEDULE_OPTIONS"]

PAPER_LR_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_RESERVED_ARCH_KEYS = ("name", "family", "builder")
