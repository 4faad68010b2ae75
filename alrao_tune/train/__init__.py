"""ONE training loop for every method (see :mod:`.trainer`), its typed config
(:mod:`.config`), result (:mod:`.history`), learning-rate schedules (:mod:`.schedule`) and
the LR range test (:mod:`.lr_finder`)."""

from __future__ import annotations

from alrao_tune.train.config import ConfigError, TrainConfig
from alrao_tune.train.history import History
from alrao_tune.train.lr_finder import LRFindResult, lr_find
from alrao_tune.train.trainer import CheckpointError, Trainer, fit

__all__ = [
    "CheckpointError",
    "ConfigError",
    "History",
    "LRFindResult",
    "TrainConfig",
    "Trainer",
    "fit",
    "lr_find",
]
