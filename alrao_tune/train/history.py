"""The result of one training run: per-epoch records plus a summary."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from alrao_tune.schema import head_key

STATUSES = ("completed", "early_stopped", "time_budget", "diverged")
__all__ = ["STATUSES", "History", "head_key"]


@dataclass
class History:
    """Everything a finished (or diverged) run produced.

    Attributes:
        config: the run's :class:`~alrao_tune.train.TrainConfig` as a dict.
        records: one dict per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_acc``,
            times, and for Alrao ``lr_eff``, ``share_in_decade``, ``best_head_val_loss``,
            ``head_loss/head_XX`` and ``step_metrics`` with the per-step posteriors).
        status: ``completed`` | ``early_stopped`` | ``time_budget`` | ``diverged``.
        best_epoch: epoch (1-based) of the lowest validation loss, None if none was finite.
        best: that epoch's record (without ``step_metrics``).
        test_loss: test loss of the model at ``best_epoch``.
        test_acc: test accuracy of the model at ``best_epoch`` (classification).
        n_params: number of parameters of the architecture (without Alrao's extra heads).
        train_time_s: wall time of training plus validation.
        steps: optimizer steps taken.
        head_rates: Alrao's K head learning rates.
    """

    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    status: str = "completed"
    best_epoch: int | None = None
    best: dict[str, Any] = field(default_factory=dict)
    test_loss: float | None = None
    test_acc: float | None = None
    n_params: int = 0
    train_time_s: float = 0.0
    steps: int = 0
    head_rates: list[float] | None = None

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def curve(self, key: str) -> list[float]:
        """The per-epoch values of ``key`` (NaN where an epoch lacks it)."""
        return [float(r.get(key, math.nan)) for r in self.records]

    def summary(self) -> dict[str, Any]:
        """A flat, JSON-able summary: best-epoch validation metrics, test metrics, cost."""
        out: dict[str, Any] = {
            "status": self.status, "best_epoch": self.best_epoch, "epochs": len(self.records),
            "n_params": self.n_params, "train_time_s": self.train_time_s, "steps": self.steps,
            "test_loss": self.test_loss, "test_acc": self.test_acc,
        }
        for key in ("val_loss", "val_acc", "lr_eff", "best_head_val_loss", "share_in_decade"):
            if key in self.best:
                out[key] = self.best[key]
        if self.best_epoch is None:
            out["val_loss"] = math.inf
        return out

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python data (JSON-able except non-finite floats)."""
        return asdict(self)
