"""The typed configuration of one training run.

A Ray Tune trainable receives a plain dict; :meth:`TrainConfig.from_dict` converts it
once, at the boundary, into this frozen dataclass. Everything inside is typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alrao_tune.errors import AlraoTuneError
from alrao_tune.schema import LR_FREE_METHODS

METHODS = ("alrao", "sgd", "adam", *LR_FREE_METHODS)
ALRAO_OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "cyclic", "onecycle")


class ConfigError(AlraoTuneError, ValueError):
    """A training configuration key has a bad value; the message names key, value and fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (one architecture, one method, one seed).

    Attributes:
        dataset: dataset name (see :data:`alrao_tune.schema.DATASETS`).
        dataset_options: keyword options of the dataset loader (e.g. ``n_train``, ``path``).
        data_seed: seed of the dataset split (which examples are held out for validation);
            generated datasets take their generation seed from ``dataset_options``.
        arch: architecture spec for :func:`alrao_tune.zoo.build_model`.
        method: ``alrao`` (random per-feature rates + switch-averaged heads), ``sgd`` or
            ``adam`` (a plain optimizer at learning rate ``lr``), or a learning-rate-free
            method at its package's defaults (``prodigy``, ``dadapt_sgd``, ``dadapt_adam``,
            ``schedulefree_sgd``, ``schedulefree_adamw``; see
            :mod:`alrao_tune.train.optimizers`).
        lr: learning rate of ``sgd``/``adam``; ignored by ``alrao`` and the
            learning-rate-free methods.
        momentum: SGD momentum (``sgd``, and ``alrao`` with ``alrao_optimizer="sgd"``).
        weight_decay: L2 weight decay, torch semantics.
        nesterov: Nesterov momentum for SGD.
        lr_min: lower end of Alrao's log-uniform learning-rate interval.
        lr_max: upper end of Alrao's interval.
        head_lr_min, head_lr_max: the interval of the heads' rates when it should differ
            from the body's (None: ``lr_min`` / ``lr_max``).
        n_heads: number of output-layer clones K averaged by the switch.
        theta: switch prior parameter (the paper uses 0.999).
        alrao_optimizer: the update rule the Alrao per-feature rates are used with.
        epochs: maximum number of epochs.
        batch_size: mini-batch size.
        patience: early stopping after this many epochs without a better validation
            loss; ``None`` disables it.
        min_epochs: early stopping cannot fire before this many epochs.
        time_budget_s: optional wall-clock budget; the run stops after the epoch that
            exceeds it.
        seed: seed of initialisation, Alrao's rate sampling, shuffling and augmentation.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        schedule: learning-rate schedule ``{"name": ..., **options}``; it scales the
            group learning rate, so for Alrao it scales every per-feature rate at once.
        posterior_every: record the switch posterior every this many steps (0: per epoch only).
        eval_batch_size: batch size of evaluation passes.
        compile: run the training step (forward, backward, optimizer step) through
            ``torch.compile`` (see :mod:`alrao_tune.train.step`); evaluation stays eager.
    """

    dataset: str = "mnist1d"
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    arch: Mapping[str, Any] = field(default_factory=lambda: {"family": "mlp", "widths": [64]})
    method: str = "alrao"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    lr_min: float = 1e-4
    lr_max: float = 1.0
    head_lr_min: float | None = None
    head_lr_max: float | None = None
    n_heads: int = 10
    theta: float = 0.999
    alrao_optimizer: str = "sgd"
    epochs: int = 20
    batch_size: int = 32
    patience: int | None = 5
    min_epochs: int = 0
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "auto"
    schedule: Mapping[str, Any] = field(default_factory=lambda: {"name": "constant"})
    posterior_every: int = 0
    eval_batch_size: int = 1024
    compile: bool = False

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("alrao_optimizer", self.alrao_optimizer, ALRAO_OPTIMIZERS)
        _check_choice("schedule.name", str(self.schedule.get("name", "")), SCHEDULES)
        checks = [
            ("lr", self.lr, self.lr > 0 and math.isfinite(self.lr), "a positive number"),
            ("lr_min", self.lr_min, self.lr_min > 0, "a positive number"),
            ("lr_max", self.lr_max, self.lr_max >= self.lr_min, f"≥ lr_min={self.lr_min}"),
            ("n_heads", self.n_heads, self.n_heads >= 1, "an integer ≥ 1"),
            ("theta", self.theta, 0 < self.theta < 1, "in (0, 1)"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "≥ 0"),
            ("epochs", self.epochs, self.epochs >= 1, "an integer ≥ 1"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "an integer ≥ 1"),
            ("patience", self.patience, self.patience is None or self.patience >= 1, "≥ 1"),
            ("min_epochs", self.min_epochs, self.min_epochs >= 0, "≥ 0"),
            ("posterior_every", self.posterior_every, self.posterior_every >= 0, "≥ 0"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{key} must be {allowed}, but got {key}={value!r}.")
        low, high = self.head_interval or (self.lr_min, self.lr_max)
        if not 0 < low <= high:
            raise ConfigError(f"the heads' interval must have 0 < head_lr_min <= head_lr_max, "
                              f"but got [{low!r}, {high!r}].")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov=True needs momentum > 0; set momentum (e.g. 0.9).")

    @property
    def head_interval(self) -> tuple[float, float] | None:
        """The heads' own ``(lr_min, lr_max)``, or None when they share the body's."""
        if self.head_lr_min is None and self.head_lr_max is None:
            return None
        return (self.lr_min if self.head_lr_min is None else self.head_lr_min,
                self.lr_max if self.head_lr_max is None else self.head_lr_max)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from a plain dict, rejecting unknown keys with a suggestion."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown training option {key!r}.{hint}")
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of the config (inverse of :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out["dataset_options"] = dict(self.dataset_options)
        out["arch"] = dict(self.arch)
        out["schedule"] = dict(self.schedule)
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, but got {value!r}.")
