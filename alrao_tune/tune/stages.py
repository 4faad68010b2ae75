"""The two screening stages as Ray Tune jobs.

Stage 1: one trial per (architecture, seed), method ``stage1.proxy`` (``alrao`` by default;
``adam`` runs at lr 1e-3, the learning-rate-free methods at their defaults); the trials
are a ``tune.grid_search`` over prepared configs, optionally under ASHA.
Stage 2: for each top-k architecture, an Optuna search (Ray Tune ``OptunaSearch`` with
``stage2.sampler``, by default the bracket search around Alrao's rate) over the learning
rate (log scale) and whatever else the search space opens (momentum, weight decay), first
evaluating the Alrao effective learning rate of that architecture when
``seed_with_alrao`` is on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from alrao_tune.space import SearchSpace


def device_for(space: SearchSpace) -> str:
    """The trial device: the YAML's ``training.device``; ``auto`` follows ``resources.gpu``."""
    device = space.training.device
    if device == "auto":
        return "cuda" if space.resources.gpu > 0 else "cpu"
    return device


def train_config(space: SearchSpace, arch: dict[str, Any], *, method: str, seed: int) -> dict:
    """The plain-dict TrainConfig of one trial of ``arch`` (validated by the trainable)."""
    t = space.training
    cfg: dict[str, Any] = {
        "dataset": space.dataset.name, "dataset_options": dict(space.dataset.options),
        "data_seed": space.dataset.seed, "arch": dict(arch), "method": method, "seed": seed,
        "epochs": t.epochs, "batch_size": t.batch_size, "patience": t.patience,
        "min_epochs": t.min_epochs, "time_budget_s": t.time_budget_s,
        "device": device_for(space), "schedule": dict(t.schedule),
    }
    if t.compile:  # only when asked, so existing trial configs stay as they were
        cfg["compile"] = True
    if method == "alrao":
        a = space.alrao
        cfg.update(lr_min=a.lr_min, lr_max=a.lr_max, n_heads=a.n_heads, theta=a.theta,
                   alrao_optimizer=a.optimizer, momentum=a.momentum,
                   weight_decay=a.weight_decay, posterior_every=t.posterior_every)
        cfg.update({k: getattr(a, k) for k in ("head_lr_min", "head_lr_max")
                    if getattr(a, k) is not None})  # only when set: configs stay as they were
    return cfg


def stage1_param_space(space: SearchSpace) -> dict[str, Any]:
    """A grid over every (architecture, seed) pair, each a complete trial config."""
    from ray import tune

    proxy = space.stage1.proxy
    trials = [
        {"stage": "stage1", "arch_name": arch["name"],
         "train": stage1_train_config(space, arch, proxy, seed)}
        for arch in space.architectures_resolved()
        for seed in space.stage1.seeds
    ]
    return {"trial": tune.grid_search(trials)}


ADAM_DEFAULT_LR = 1e-3  # Adam "at its defaults" (torch's and the paper's)


def stage1_train_config(space: SearchSpace, arch: dict[str, Any], proxy: str,
                        seed: int) -> dict[str, Any]:
    """The TrainConfig dict of one stage-1 run of ``arch`` with ``proxy`` (a method)."""
    cfg = train_config(space, arch, method=proxy, seed=seed)
    if proxy == "adam":
        cfg["lr"] = ADAM_DEFAULT_LR
    return cfg


def stage1_scheduler(space: SearchSpace) -> Any:
    """ASHA over epochs when the YAML asks for it, else None (every trial runs out)."""
    asha = space.stage1.asha
    if asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch", max_t=space.training.epochs, grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor)


def stage2_param_space(space: SearchSpace, arch: dict[str, Any]) -> dict[str, Any]:
    """The constant part of a stage-2 trial config (the searcher adds lr, ...)."""
    s2 = space.stage2
    train = train_config(space, arch, method=s2.optimizer, seed=s2.seed)
    for key in ("momentum", "weight_decay"):
        value = getattr(s2, key)
        if isinstance(value, (int, float)):
            train[key] = float(value)
    return {"stage": "stage2", "arch_name": arch["name"], "train": train}


def seed_point(space: SearchSpace, lr_eff: float) -> float | None:
    """Alrao's effective rate clipped into the stage-2 range (None if unusable/off)."""
    s2 = space.stage2
    if not s2.seed_with_alrao or not (isinstance(lr_eff, float) and math.isfinite(lr_eff)):
        return None
    if lr_eff <= 0:
        return None
    return float(min(max(lr_eff, s2.lr.low), s2.lr.high))


def lr_bounds(space: SearchSpace, lr_eff: float) -> tuple[float, float]:
    """Stage 2's learning-rate range for one architecture: ``stage2.lr``, or with
    ``stage2.lr_window`` = w the rates within w decades of Alrao's effective rate (clipped
    into ``stage2.lr``; the whole range when the rate is unusable)."""
    s2 = space.stage2
    low, high = s2.lr.low, s2.lr.high
    if s2.lr_window is None or not (math.isfinite(lr_eff) and lr_eff > 0):
        return low, high
    centre = min(max(lr_eff, low), high)
    return max(low, centre / 10**s2.lr_window), min(high, centre * 10**s2.lr_window)


def stage2_searcher(space: SearchSpace, metric: str, mode: str,
                    lr_range: tuple[float, float] | None = None, *, storage: Any = None,
                    study_name: str | None = None, anchor: float = math.nan) -> Any:
    """OptunaSearch over lr (log; ``lr_range`` or ``stage2.lr``) and the opened momentum /
    weight decay ranges, on the study ``study_name`` of ``storage`` (an Optuna storage,
    see :mod:`alrao_tune.tune.optuna_storage`; None: a new in-memory study), with the
    sampler ``stage2.sampler`` (:func:`alrao_tune.tune.samplers.make_sampler`; ``anchor``,
    the architecture's Alrao effective rate, centres ``bracket``). The first point
    (Alrao's rate) is enqueued by :class:`~alrao_tune.tune.search.PerArchSearch`."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from alrao_tune.tune.samplers import make_sampler

    s2 = space.stage2
    low, high = lr_range or (s2.lr.low, s2.lr.high)
    dists: dict[str, Any] = {"lr": optuna.distributions.FloatDistribution(low, high, log=True)}
    for key in ("momentum", "weight_decay"):
        value = getattr(s2, key)
        if not isinstance(value, (int, float)):
            dists[key] = optuna.distributions.FloatDistribution(
                value.low, value.high, log=bool(getattr(value, "log", False)))
    sampler = make_sampler(s2.sampler, seed=s2.seed, startup_trials=s2.startup_trials,
                           anchor=anchor, low=low, high=high)
    return OptunaSearch(space=dists, metric=metric, mode=mode, sampler=sampler,
                        storage=storage, study_name=study_name)


def per_arch_search(space: SearchSpace, lr_eff: Mapping[str, float],
                    constants: Mapping[str, dict[str, Any]], *, metric: str, mode: str,
                    storage: Any, studies: Mapping[str, str], budget: int) -> Any:
    """Stage 2's searcher over the architectures of ``constants`` (their trial configs):
    a :class:`~alrao_tune.tune.search.PerArchSearch` giving each architecture ``budget``
    trials from its own study ``studies[name]`` on ``storage``, with the sampler of
    :func:`stage2_searcher` anchored at its Alrao rate ``lr_eff[name]``, its range
    :func:`lr_bounds` and, first, :func:`seed_point`."""
    from alrao_tune.tune.search import PerArchSearch

    eff = {n: float(lr_eff.get(n, math.nan)) for n in constants}
    first = {n: seed_point(space, eff[n]) for n in constants}
    return PerArchSearch(
        {n: stage2_searcher(space, metric, mode, lr_bounds(space, eff[n]), storage=storage,
                            study_name=studies[n], anchor=eff[n]) for n in constants},
        constants, budget=budget, metric=metric, mode=mode,
        studies={n: (storage, studies[n]) for n in constants},
        first_points={n: {"lr": p} for n, p in first.items() if p is not None})


def stage2_scheduler(space: SearchSpace, metric: str, mode: str) -> Any:
    """``stage2.scheduler: asha``: one ASHA per architecture (None: every trial runs out)."""
    if space.stage2.scheduler != "asha":
        return None
    from alrao_tune.tune.search import PerArchScheduler

    return PerArchScheduler(space.training.epochs, metric, mode,
                            grace_period=max(1, space.training.min_epochs))


def safe_name(text: str) -> str:
    """A file/experiment-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"
