"""The per-section pydantic models of a search space (all but the architecture grids).

Each model is strict, frozen and forbids unknown keys. Validators raise
:class:`~alrao_tune.space.errors._Invalid`, which :func:`~alrao_tune.space.parse_space`
turns into a one-line :class:`~alrao_tune.space.SpaceError`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from alrao_tune.schema import ALRAO_VARIANT_KEYS, alrao_variant_name

from .constants import (
    DATASETS,
    LR_FREE_METHODS,
    PAPER_LR_GRID,
    PATH_DATASETS,
    SCHEDULE_OPTIONS,
    STAGE1_PROXIES,
    STRATEGIES,
    STRATEGY_NAMES,
)
from .errors import _MISSING, _check_choice, _Invalid

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Dataset(_Model):
    """``dataset``: which loader (``name``), its free-form ``options`` and the split ``seed``.

    ``${VAR}`` in string options is replaced from the environment; ``options.path`` is
    resolved against the YAML file's directory and stored absolute (Ray trials run in
    another working directory).
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        _check_choice("", name, DATASETS, "dataset")
        return name

    @field_validator("options")
    @classmethod
    def _expand(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        options = {k: _expand_env(v, str(k)) for k, v in options.items()}
        name = info.data.get("name")
        if "path" not in options:
            if name in PATH_DATASETS:
                raise _Invalid("path", _MISSING, f"required for dataset {name!r}: a local path")
            return options
        if not isinstance(options["path"], str):
            raise _Invalid("path", options["path"], "must be a string (a file or directory)")
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = (Path(base) / Path(options["path"]).expanduser()).resolve()
        if not path.exists():
            raise _Invalid("path", options["path"], f"does not exist (tried {path})")
        return {**options, "path": str(path)}


class Training(_Model):
    """``training``: epochs, batch size, early stopping, time budget, device, LR schedule,
    torch.compile."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    patience: int | None = Field(5, ge=1)
    min_epochs: int = Field(0, ge=0)
    time_budget_s: float | None = Field(None, gt=0)
    device: str = "auto"
    schedule: dict[str, Any] = Field(default_factory=lambda: {"name": "constant"})
    posterior_every: int = Field(10, ge=0)  # switch posterior logged every N steps (0: per epoch)
    compile: bool = False  # torch.compile the training step (alrao_tune.train.step)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", device):
            raise _Invalid("", device, "must be auto, cpu, cuda or cuda:N")
        return device

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, spec: dict[str, Any]) -> dict[str, Any]:
        if "name" not in spec:
            raise _Invalid("name", _MISSING, f"required: one of {', '.join(SCHEDULE_OPTIONS)}")
        name = _check_choice("name", spec["name"], tuple(SCHEDULE_OPTIONS), "schedule")
        for key, value in spec.items():
            if key != "name":
                _check_choice(str(key), key, SCHEDULE_OPTIONS[name], f"option of {name!r}")
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise _Invalid(str(key), value, "must be a number")
        return spec

    @model_validator(mode="after")
    def _min_epochs(self) -> Training:
        if self.min_epochs > self.epochs:
            raise _Invalid("min_epochs", self.min_epochs, f"must be <= epochs ({self.epochs})")
        return self


class Alrao(_Model):
    """``alrao``: the log-uniform interval, K heads, switch prior and the base optimizer."""

    lr_min: float = Field(1e-4, gt=0)  # measured: see README "Does the proxy work?"
    lr_max: float = 1.0
    # the heads' own interval, when it should differ from the body's (null: lr_min/lr_max)
    head_lr_min: float | None = Field(None, gt=0)
    head_lr_max: float | None = Field(None, gt=0)
    n_heads: int = Field(10, ge=1)
    theta: float = Field(0.999, gt=0, lt=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _interval(self) -> Alrao:
        if not self.lr_min < self.lr_max:
            raise _Invalid("lr_min", self.lr_min, f"must be < lr_max ({self.lr_max})")
        low = self.lr_min if self.head_lr_min is None else self.head_lr_min
        high = self.lr_max if self.head_lr_max is None else self.head_lr_max
        if not low <= high:
            raise _Invalid("head_lr_min", low, f"must be <= the heads' lr_max ({high})")
        return self


class Asha(_Model):
    """``stage1.asha``: Ray's ASHA early stopping of weak architectures (``max_t`` = epochs)."""

    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Stage1(_Model):
    """``stage1``: one ``proxy`` run per architecture and seed (Alrao by default; ``adam`` at
    its defaults or a learning-rate-free method also work); keep the ``top_k`` by ``metric``."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    proxy: str = "alrao"
    metric: Literal["val_loss", "val_acc", "best_head_val_loss"] = "val_loss"
    top_k: int = Field(2, ge=1)
    asha: Asha | None = None

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        return _seed_list(value)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, proxy: str) -> str:
        return _check_choice("", proxy, STAGE1_PROXIES, "stage-1 proxy")

    @model_validator(mode="after")
    def _metric_of_proxy(self) -> Stage1:
        if self.metric == "best_head_val_loss" and self.proxy != "alrao":
            raise _Invalid("metric", self.metric, f"needs proxy: alrao (Alrao's heads), but "
                           f"proxy is {self.proxy!r}; use val_loss or val_acc")
        return self


class LrRange(_Model):
    """A log-scale search range ``[low, high]``, ``0 < low < high``."""

    low: float = Field(gt=0)
    high: float

    @model_validator(mode="after")
    def _order(self) -> LrRange:
        if not self.low < self.high:
            raise _Invalid("low", self.low, f"must be < high ({self.high})")
        return self


class SearchRange(_Model):
    """A searched range ``[low, high]``, linear or (``log: true``) log-scale."""

    low: float = Field(ge=0)
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> SearchRange:
        if not self.low < self.high:
            raise _Invalid("low", self.low, f"must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise _Invalid("low", self.low, "must be > 0 for a log-scale range")
        return self


def _fixed_or_range(value: Any) -> str:
    return "range" if isinstance(value, Mapping | SearchRange) else "fixed"


FixedOrRange = Annotated[
    Annotated[float, Tag("fixed")] | Annotated[SearchRange, Tag("range")],
    Discriminator(_fixed_or_range),
]


class Stage2(_Model):
    """``stage2``: an Optuna (Ray ``OptunaSearch``) learning-rate search per top-k architecture."""

    enabled: bool = True
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: LrRange = Field(default_factory=lambda: LrRange(low=1e-4, high=1.0))
    momentum: FixedOrRange = 0.0
    weight_decay: FixedOrRange = 0.0
    trials_per_arch: int = Field(6, ge=1)
    # which rates each architecture's study tries (alrao_tune.tune.samplers): bracket (a
    # deterministic search around the Alrao effective rate; measured to need the fewest
    # trials, docs/strategies.md), tpe, gp or random
    sampler: Literal["tpe", "gp", "random", "bracket"] = "bracket"
    # tpe / gp: random trials before the model takes over (null: Optuna's default, 10)
    startup_trials: int | None = Field(None, ge=1)
    # asha: stop an architecture's bad rates early (one ASHA per architecture, over epochs)
    scheduler: Literal["none", "asha"] = "none"
    seed: int = 0
    seed_with_alrao: bool = True
    # search only within this many decades of the architecture's Alrao effective rate
    # (inside lr.low..lr.high); null: the whole lr range
    lr_window: float | None = Field(None, gt=0)
    metric: Literal["val_loss", "val_acc"] = "val_loss"
    # where the Optuna studies live: null = an optuna.db beside the MLflow SQLite store
    # (or in --storage), "memory", or any Optuna RDB URL (sqlite:////abs/optuna.db, ...)
    storage: str | None = None

    @model_validator(mode="after")
    def _momentum_below_one(self) -> Stage2:
        top = self.momentum.high if isinstance(self.momentum, SearchRange) else self.momentum
        if top >= 1:
            raise _Invalid("momentum", _dump(self.momentum), "must be in [0, 1)")
        return self

    @field_validator("momentum", "weight_decay")
    @classmethod
    def _non_negative(cls, value: float | SearchRange) -> float | SearchRange:
        if isinstance(value, float) and value < 0:
            raise _Invalid("", value, "must be >= 0")
        return value


class StrategyAsha(_Model):
    """``compare.asha``: the ASHA of the ``asha``/``asha_tpe`` strategies; null values are
    Tune's defaults (grace period 1, reduction factor 4)."""

    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float | None = Field(None, gt=1)


class Compare(_Model):
    """``compare``: the truth the proxy is measured against (SGD over ``lr_grid``, Adam)."""

    lr_grid: list[float] = Field(default_factory=lambda: list(PAPER_LR_GRID), min_length=1)
    half_decades: bool = False
    momentum: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    adam: bool = True
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    min_epochs: int | None = Field(None, ge=0)
    default_lr: float = Field(0.01, gt=0)  # the "SGD at one fixed default rate" proxy
    lr_find: bool = True  # proxy: LR range test, then one SGD run with 1cycle at its suggestion
    alrao_auto_range: bool = True  # proxy: Alrao with its interval chosen by an LR range test
    alrao_momentum: list[float] = Field(default_factory=list)  # proxies: Alrao-SGD with momentum
    # proxies: Alrao on other intervals [lr_min, lr_max] (the paper's Fig. 3 question)
    alrao_ranges: list[list[float]] = Field(default_factory=list)
    # proxies: Alrao with other settings, each a mapping of lr_min, lr_max, head_lr_min,
    # head_lr_max, n_heads, theta (the rest from ``alrao``), e.g. {n_heads: 3} ->
    # proxy alrao_K3; {head_lr_max: 10} -> alrao_hmax10 (issue 14 item 5)
    alrao_variants: list[dict[str, float]] = Field(default_factory=list)
    # single-run proxies: learning-rate-free methods at their defaults
    lr_free: list[str] = Field(default_factory=lambda: list(LR_FREE_METHODS))
    # end-to-end screening strategies (``all``: two_stage, asha, asha_tpe, random)
    strategies: list[str] = Field(default_factory=lambda: list(STRATEGIES))
    repeats: int = Field(3, ge=1)  # each strategy this many times, search seeds 0, 1, ...
    # the trial budget of asha / asha_tpe / random per repeat, as a share of the epochs the
    # grid spends on one seed (they stop once it is spent)
    strategy_budget: float = Field(0.5, gt=0)
    asha: StrategyAsha = Field(default_factory=StrategyAsha)
    # stage-2 methods measured head to head (<sampler>[:<startup trials>][+asha], e.g.
    # tpe, tpe:3, gp:3, bracket, bracket+asha): each tunes EVERY architecture from its Alrao
    # effective rate with stage2_trials trials, compare.repeats times; [] = none
    stage2_methods: list[str] = Field(default_factory=list)
    stage2_trials: int | None = Field(None, ge=1)  # null: stage2.trials_per_arch

    @field_validator("stage2_methods")
    @classmethod
    def _methods(cls, values: list[str]) -> list[str]:
        from alrao_tune.schema import parse_stage2_method as parse_method

        for i, name in enumerate(values):
            try:
                parse_method(name)
            except ValueError as err:
                raise _Invalid(f"[{i}]", name, str(err)) from None
        if len(set(values)) < len(values):
            raise _Invalid("", values, "lists a name twice")
        return values

    @field_validator("alrao_variants")
    @classmethod
    def _variants(cls, values: list[dict[str, float]]) -> list[dict[str, float]]:
        for i, variant in enumerate(values):
            for key, value in variant.items():
                _check_choice(f"[{i}].{key}", key, tuple(ALRAO_VARIANT_KEYS), "Alrao setting")
                if not (isinstance(value, (int, float)) and value > 0):
                    raise _Invalid(f"[{i}].{key}", value, "must be a positive number")
            if not variant:
                raise _Invalid(f"[{i}]", variant, "names no setting (e.g. {n_heads: 3})")
        names = [alrao_variant_name(v) for v in values]
        if len(set(names)) < len(names):
            raise _Invalid("", values, "lists a variant twice")
        return values

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        return _seed_list(value)

    @field_validator("strategies", mode="before")
    @classmethod
    def _all(cls, value: Any) -> Any:
        return list(STRATEGIES) if value == "all" else value

    @field_validator("strategies", "lr_free")
    @classmethod
    def _names(cls, values: list[str], info: ValidationInfo) -> list[str]:
        allowed = STRATEGY_NAMES if info.field_name == "strategies" else LR_FREE_METHODS
        what = "strategy" if info.field_name == "strategies" else "learning-rate-free method"
        for i, name in enumerate(values):
            _check_choice(f"[{i}]", name, allowed, what)
        if len(set(values)) < len(values):
            raise _Invalid("", values, "lists a name twice")
        return values

    @field_validator("lr_grid", "momentum", "alrao_momentum")
    @classmethod
    def _bounds(cls, values: list[float], info: ValidationInfo) -> list[float]:
        for i, v in enumerate(values):
            if info.field_name == "lr_grid" and not v > 0:
                raise _Invalid(f"[{i}]", v, "learning rates must be > 0")
            if info.field_name != "lr_grid" and not 0 <= v < 1:
                raise _Invalid(f"[{i}]", v, "momentum must be in [0, 1)")
        return values

    @field_validator("alrao_ranges")
    @classmethod
    def _ranges(cls, values: list[list[float]]) -> list[list[float]]:
        for i, pair in enumerate(values):
            if len(pair) != 2 or not 0 < pair[0] < pair[1]:
                raise _Invalid(f"[{i}]", pair, "must be [lr_min, lr_max] with "
                               "0 < lr_min < lr_max")
        return values

    def lr_values(self) -> list[float]:
        """The sorted SGD grid; with ``half_decades``, x·√10 (3 significant digits) added."""
        grid = sorted(set(self.lr_grid))
        if self.half_decades:
            mids = [float(f"{a * math.sqrt(10):.3g}") for a in grid[:-1]]
            grid = sorted(set(grid) | {m for m, b in zip(mids, grid[1:], strict=True) if m < b})
        return grid


class Resources(_Model):
    """``resources``: Ray resources of one trial (fractions allowed)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


def _seed_list(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _Invalid("", value, "a seed count must be >= 1 (or give a list of seeds)")
        return list(range(value))
    return value


def _expand_env(value: Any, key: str) -> Any:
    if isinstance(value, str):
        for var in _ENV_VAR.findall(value):
            if var not in os.environ:
                raise _Invalid(key, value, f"environment variable {var} is not set; export it")
        return _ENV_VAR.sub(lambda m: os.environ[m.group(1)], value)
    if isinstance(value, list):
        return [_expand_env(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}") for k, v in value.items()}
    return value


def _dump(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value
