"""Learning-rate schedules: torch's schedulers over the optimizer's group learning rate.

For ``sgd``/``adam`` the group rate is the learning rate itself. For Alrao the group rate
is a multiplier (1.0 by default) of every per-feature rate, so the same torch scheduler
scales all of Alrao's rates at once.

Schedules (``{"name": ..., **options}``):
    constant: no schedule.
    step: ``StepLR`` per epoch; options ``step_size`` (epochs, default 10), ``gamma`` (0.1).
    cosine: ``CosineAnnealingLR`` per step over the whole run; ``eta_min_factor`` (0.0).
    cyclic: triangular ``CyclicLR`` per step between ``base_lr_factor`` (0.1) × base and
        base, half-cycle ``step_size_epochs`` (2); momentum cycles inversely when > 0.
    onecycle: Smith's 1cycle policy, ``OneCycleLR`` per step with peak ``max_lr_factor``
        (1.0) × base, ``pct_start`` (0.3), ``div_factor`` (25), ``final_div_factor`` (1e4);
        inverse momentum cycling between 0.85 and 0.95 when the optimizer has momentum
        (SGD momentum > 0, or Adam's beta1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from alrao_tune.train.config import ConfigError


@dataclass
class Schedule:
    """A built scheduler and when to step it."""

    scheduler: lr_scheduler.LRScheduler | None
    per_step: bool

    def step_batch(self) -> None:
        if self.scheduler is not None and self.per_step:
            self.scheduler.step()

    def step_epoch(self) -> None:
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step()


def build_schedule(
    optimizer: torch.optim.Optimizer,
    spec: Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    has_momentum: bool,
) -> Schedule:
    """Builds the schedule named by ``spec["name"]`` for ``optimizer``."""
    opts = {k: v for k, v in spec.items() if k != "name"}
    name = spec.get("name", "constant")
    base = optimizer.param_groups[0]["lr"]
    total = max(1, epochs * steps_per_epoch)
    try:
        if name == "constant":
            _no_options(name, opts)
            return Schedule(None, per_step=False)
        if name == "step":
            sched = lr_scheduler.StepLR(
                optimizer, step_size=int(opts.pop("step_size", 10)),
                gamma=float(opts.pop("gamma", 0.1)),
            )
            _no_options(name, opts)
            return Schedule(sched, per_step=False)
        if name == "cosine":
            eta = float(opts.pop("eta_min_factor", 0.0)) * base
            _no_options(name, opts)
            return Schedule(lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=eta), True)
        if name == "cyclic":
            half = max(1, int(float(opts.pop("step_size_epochs", 2)) * steps_per_epoch))
            sched = lr_scheduler.CyclicLR(
                optimizer, base_lr=float(opts.pop("base_lr_factor", 0.1)) * base,
                max_lr=base, step_size_up=half, cycle_momentum=has_momentum,
            )
            _no_options(name, opts)
            return Schedule(sched, per_step=True)
        if name == "onecycle":
            sched = lr_scheduler.OneCycleLR(
                optimizer, max_lr=float(opts.pop("max_lr_factor", 1.0)) * base,
                total_steps=total, pct_start=float(opts.pop("pct_start", 0.3)),
                div_factor=float(opts.pop("div_factor", 25.0)),
                final_div_factor=float(opts.pop("final_div_factor", 1e4)),
                cycle_momentum=has_momentum,
            )
            _no_options(name, opts)
            return Schedule(sched, per_step=True)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"schedule {name!r}: {err}") from err
    raise ConfigError(f"unknown schedule {name!r}; use constant, step, cosine, cyclic, onecycle.")


def _no_options(name: str, left: Mapping[str, Any]) -> None:
    if left:
        raise ConfigError(f"schedule {name!r} has unknown option(s): {', '.join(sorted(left))}.")
