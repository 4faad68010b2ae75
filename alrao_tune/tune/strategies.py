"""Screening strategies run end to end inside ``alrao-tune compare`` (issue 14).

Each strategy is a real search on Ray Tune over the same architectures, data, epoch
budget and minimum epochs as the comparison's grid (the truth), ``compare.repeats`` times
with search seeds 0, 1, ...; its trials are logged to MLflow under one run per
(strategy, repeat), a child of the compare run:

* ``two_stage`` (and ``two_stage_<proxy>``): the product's own screening through the same
  code as ``screen`` (:class:`alrao_tune.tune.screen._Pipeline`), stage 1 with the space's
  ``stage1.proxy`` (or ``<proxy>``) on seed r, stage 2 on the top 3; k = 1, 2, 3 are read
  from that one run (stage 2 tunes each architecture with its own study);
* ``asha``: random search (Optuna's RandomSampler) over (architecture, log-uniform rate
  over the grid's range) with Tune's ``ASHAScheduler`` (max_t = the epoch budget; grace
  period and reduction factor from ``compare.asha``, Tune's defaults otherwise);
* ``asha_tpe``: the same with Ray's ``OptunaSearch`` and TPE over the joint space;
* ``random``: random search over the joint space without early stopping.

Equal compute: ``asha``, ``asha_tpe`` and ``random`` stop once their trials have run
``compare.strategy_budget`` (default 0.5) times the epochs the grid spent on one seed;
``two_stage`` spends what the screening spends. Trials use plain SGD with the truth's first
momentum, as the grid does. Each finished (strategy, repeat) writes its trial log to
``<comparison>/strategies/<strategy>-r<repeat>.csv``; ``--resume`` reuses those and runs
the others afresh. The curves and tables come from :mod:`alrao_tune.report.anytime`.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from ray.tune import Stopper
from ray.tune.search import Searcher

from alrao_tune.report import anytime
from alrao_tune.schema import KIND_TAG
from alrao_tune.space import SearchSpace
from alrao_tune.tune import stages
from alrao_tune.tune.storage import Location
from alrao_tune.tune.trainable import TRACK_TEST_KEY, trial_config

Progress = Callable[[str], None]
KS = (1, 2, 3)


@dataclass
class StrategyContext:
    """What every strategy run needs from the comparison."""

    space: SearchSpace
    tree: Any  # tracking.RunTree
    parent: str  # the compare run
    root: Location  # <comparison>/strategies
    say: Progress
    min_epochs: int
    budget_epochs: float = math.nan  # the budget of asha / asha_tpe / random per repeat

    @property
    def momentum(self) -> float:
        return self.space.compare.momentum[0]


def run_strategies(ctx: StrategyContext, trials: pd.DataFrame) -> dict[str, Any]:
    """Every strategy of ``compare.strategies``, ``compare.repeats`` times (a finished one,
    from an earlier invocation, is read from its log file), and the report
    (:func:`anytime.strategy_report`) against the grid in ``trials``."""
    c = ctx.space.compare
    ctx.root.mkdir()
    grid_epochs = anytime.grid_compute(trials, ctx.momentum)[1]
    ctx.budget_epochs = c.strategy_budget * grid_epochs
    ctx.say(f"strategies: {', '.join(c.strategies)} x {c.repeats} repeat(s); asha / "
            f"asha_tpe / random stop after {ctx.budget_epochs:.0f} epochs "
            f"({c.strategy_budget:g} x the grid's {grid_epochs:.0f} on one seed)")
    logs = _each(ctx, "strategy", c.strategies, lambda s, r: run_strategy(ctx, s, r))
    return anytime.strategy_report(logs, trials, ctx.momentum)


def _each(ctx: StrategyContext, what: str, names: list[str],
          run: Callable[[str, int], pd.DataFrame], prefix: str = "") -> pd.DataFrame:
    """``run(name, repeat)`` for every repeat and name, each log kept in
    ``<root>/<prefix><name>-r<repeat>.csv``; one written by an earlier invocation is read
    instead of run again. All logs, concatenated."""
    logs = []
    for repeat in range(ctx.space.compare.repeats):
        for name in names:
            path = ctx.root / f"{prefix}{stages.safe_name(name)}-r{repeat}.csv"
            if path.exists():
                ctx.say(f"{what} {name} repeat {repeat}: finished before, read {path}")
                log = pd.read_csv(io.StringIO(path.read_text()))
            else:
                log = run(name, repeat)
                path.write_text(log.to_csv(index=False))
            logs.append(log)
    return pd.concat(logs, ignore_index=True)


def run_strategy(ctx: StrategyContext, strategy: str, repeat: int) -> pd.DataFrame:
    """Runs one strategy once (search seed ``repeat``); returns its trial log
    (:data:`anytime.LOG_COLUMNS`; ``two_stage`` as ``two_stage_k1..k3``)."""
    key = f"{strategy}-r{repeat}"
    run = ctx.tree.start(f"strategy {key}", parent_run_id=ctx.parent,
                         params={"strategy": strategy, "repeat": repeat},
                         tags={KIND_TAG: "strategy"})
    status = "FAILED"
    try:
        if strategy.startswith("two_stage"):
            log = _two_stage(ctx, strategy, repeat, run)
        else:
            log = _search(ctx, strategy, repeat, run)
        status = "FINISHED"
        return log.assign(repeat=repeat)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        ctx.tree.end(run, status)


def _two_stage(ctx: StrategyContext, strategy: str, repeat: int, run: str) -> pd.DataFrame:
    from alrao_tune.tune.driver import Pipeline
    from alrao_tune.tune.resume import JobState, settings_fingerprint
    from alrao_tune.tune.screen import _Screening, _space_params

    space = ctx.space
    proxy = strategy.removeprefix("two_stage").removeprefix("_") or space.stage1.proxy
    archs = space.architectures_resolved()
    variant = space.model_copy(update={
        "stage1": space.stage1.model_copy(update={
            "seeds": [repeat], "proxy": proxy, "top_k": min(max(KS), len(archs)),
            "metric": "val_loss"}),
        "stage2": space.stage2.model_copy(update={"seed": repeat, "enabled": True})})
    ctx.say(f"strategy {strategy} repeat {repeat}: screen with {proxy}, stage 2 on the top "
            f"{variant.stage1.top_k}")
    state = JobState.create(ctx.root / f"{strategy}-r{repeat}", "pipeline",
                            settings_fingerprint(variant.model_dump(mode="json")))
    result = Pipeline(ctx.tree, state, ctx.say, resume=False).run(
        "pipeline", f"screen {variant.name}", _space_params(variant),
        _Screening(variant, archs, log_winner=False).run, parent_run_id=run)
    root = Location.parse(result.storage)
    stage1, stage2 = _grid_log(root, "stage1"), _grid_log(root, "stage2")
    return anytime.two_stage_logs(stage1, stage2, list(result.stage1["arch"]), KS, strategy)


def _grid_log(root: Location, name: str) -> pd.DataFrame:
    from alrao_tune.tune.runner import TuneJob, load_results

    grid = load_results(TuneJob(name=name, param_space={}, storage=root, resources={},
                                metric="best_val_loss", mode="min"))
    return trial_log(grid, "")


def trial_log(grid: Any, strategy: str) -> pd.DataFrame:
    """The trial log of a ResultGrid: one row per trial (:data:`anytime.LOG_COLUMNS`),
    ``end`` = the time of its last result (ties: Tune's trial order)."""
    rows = []
    for i, result in enumerate(grid):
        m = dict(result.metrics or {})
        config = trial_config(result.config or {})
        train = config.get("train", {})
        bad = (result.error is not None or m.get("run_status") == "diverged"
               or m.get("status") == "diverged")
        score = m.get("best_val_loss", math.inf)
        acc = m.get("test_acc", m.get("best_test_acc", math.nan))
        rows.append({
            "strategy": strategy, "repeat": 0, "end": float(m.get("timestamp", 0)) + i * 1e-6,
            "arch": config.get("arch_name", ""),
            "lr": float(config.get("lr", train.get("lr", math.nan))
                        if train.get("method") != "alrao" else math.nan),
            "seconds": float(m.get("time_total_s", 0.0)),
            "epochs": float(m.get("training_iteration", 0)),
            "score": math.inf if bad or score is None else float(score),
            "test_acc": float(acc) if acc is not None else math.nan, "returnable": True})
    return pd.DataFrame(rows, columns=list(anytime.LOG_COLUMNS))


def _search(ctx: StrategyContext, strategy: str, repeat: int, run: str) -> pd.DataFrame:
    from alrao_tune.tracking.callback import MLflowTrialCallback
    from alrao_tune.tune.driver import progress_callback
    from alrao_tune.tune.runner import TuneJob, run_job

    space = ctx.space
    grid = space.compare.lr_values()
    searcher = JointSearch(
        _optuna(space, strategy, repeat, (min(grid), max(grid))),
        {a["name"]: _constants(ctx, a, strategy, repeat)
         for a in space.architectures_resolved()})
    cap = int(ctx.budget_epochs) + 1  # every trial runs at least one epoch
    ctx.say(f"strategy {strategy} repeat {repeat}: until {ctx.budget_epochs:.0f} epochs")
    callback = MLflowTrialCallback(ctx.tree, run, trial_name_fn=_name)
    job = TuneJob(
        name=f"{strategy}-r{repeat}-{time.strftime('%Y%m%d-%H%M%S')}", param_space={},
        storage=ctx.root, resources=space.resources.model_dump(), metric="best_val_loss",
        mode="min", num_samples=cap, search_alg=searcher,
        scheduler=_asha(space) if strategy.startswith("asha") else None,
        stop=EpochBudget(ctx.budget_epochs),
        callbacks=[callback, progress_callback(ctx.say, strategy, cap, _name, 0)])
    try:
        result = run_job(job)
    finally:
        callback.close()
    return trial_log(result, strategy)


def _constants(ctx: StrategyContext, arch: dict[str, Any], strategy: str,
               repeat: int) -> dict[str, Any]:
    train = stages.train_config(ctx.space, arch, method="sgd", seed=repeat)
    train.update(min_epochs=ctx.min_epochs, momentum=ctx.momentum)
    return {"stage": "strategy", "proxy": strategy, "arch_name": arch["name"],
            "train": train, TRACK_TEST_KEY: True}


def _optuna(space: SearchSpace, strategy: str, seed: int, lr_range: tuple[float, float]
            ) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    names = [a["name"] for a in space.architectures_resolved()]
    dists = {"arch": optuna.distributions.CategoricalDistribution(names),
             "lr": optuna.distributions.FloatDistribution(*lr_range, log=True)}
    sampler = (optuna.samplers.TPESampler(seed=seed) if strategy == "asha_tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    return OptunaSearch(space=dists, metric="best_val_loss", mode="min", sampler=sampler)


def _asha(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    a = space.compare.asha
    options = {k: v for k, v in (("grace_period", a.grace_period),
                                 ("reduction_factor", a.reduction_factor)) if v is not None}
    return ASHAScheduler(time_attr="training_iteration", max_t=space.training.epochs,
                         **options)


def _name(trial: Any) -> str:
    c = trial_config(trial.config)
    return f"{c.get('arch_name', trial.trial_id)} lr={c.get('lr', math.nan):.3g}"


class JointSearch(Searcher):
    """A searcher over (architecture, rate): the inner Optuna searcher picks ``arch`` and
    ``lr``; the trial config is that architecture's constant config with ``lr`` set."""

    def __init__(self, inner: Any, constants: dict[str, dict[str, Any]]) -> None:
        super().__init__(metric="best_val_loss", mode="min")
        self.inner, self.constants = inner, constants

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the inner searcher was configured at construction

    def suggest(self, trial_id: str) -> dict | str | None:
        got = self.inner.suggest(trial_id)
        if not isinstance(got, dict):
            return got
        return {**self.constants[got["arch"]], "lr": float(got["lr"])}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.inner.on_trial_complete(trial_id, result, error)


class EpochBudget(Stopper):
    """Stops the experiment once its trials together have run ``budget`` epochs."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.epochs: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.epochs[trial_id] = int(result.get("training_iteration", 0))
        return False

    def stop_all(self) -> bool:
        return sum(self.epochs.values()) >= self.budget


def run_stage2_methods(ctx: StrategyContext, trials: pd.DataFrame) -> dict[str, Any]:
    """Every stage-2 method of ``compare.stage2_methods``, ``compare.repeats`` times (a
    finished one is read from ``<comparison>/strategies/stage2-<method>-r<repeat>.csv``),
    and the report (:func:`alrao_tune.report.samplers.method_report`)."""
    from alrao_tune.report import samplers

    c = ctx.space.compare
    ctx.root.mkdir()
    ctx.say(f"stage-2 methods: {', '.join(c.stage2_methods)} x {c.repeats} repeat(s), "
            f"{c.stage2_trials or ctx.space.stage2.trials_per_arch} trials on every "
            "architecture")
    logs = _each(ctx, "stage-2 method", c.stage2_methods,
                 lambda m, r: _stage2_method(ctx, trials, m, r), prefix="stage2-")
    return samplers.method_report(logs, trials, ctx.momentum)


def _stage2_method(ctx: StrategyContext, trials: pd.DataFrame, method: str,
                   repeat: int) -> pd.DataFrame:
    """One stage-2 method once (sampler seed ``repeat``): every architecture gets its own
    study in one Tune experiment (:class:`PerArchSearch`), its first trial at the
    architecture's Alrao effective rate from the comparison's Alrao run of seed
    ``compare.seeds[repeat % len(seeds)]``; trials train like the grid (plain SGD with the
    truth's momentum, the same minimum epochs), their test accuracy tracked."""
    import optuna

    from alrao_tune.schema import parse_stage2_method
    from alrao_tune.tracking.callback import MLflowTrialCallback
    from alrao_tune.tune.driver import progress_callback
    from alrao_tune.tune.runner import TuneJob, run_job
    space = ctx.space
    variant = space.model_copy(update={"stage2": space.stage2.model_copy(
        update={**parse_stage2_method(method), "seed": repeat})})
    seeds = list(space.compare.seeds)
    alrao = trials[(trials["proxy"] == "alrao") & (trials["seed"] == seeds[repeat % len(seeds)])]
    lr_eff = {str(a): float(v) for a, v in zip(alrao["arch"], alrao["lr_eff"])}
    archs = {a["name"]: a for a in space.architectures_resolved()}
    key = f"stage2-{method}-r{repeat}"
    budget = space.compare.stage2_trials or variant.stage2.trials_per_arch
    searcher = stages.per_arch_search(
        variant, lr_eff, {n: _constants(ctx, a, method, repeat) for n, a in archs.items()},
        metric="best_val_loss", mode="min", storage=optuna.storages.InMemoryStorage(),
        studies={n: f"{key}/{n}" for n in archs}, budget=budget)
    total = budget * len(archs)
    ctx.say(f"stage-2 method {method} repeat {repeat}: {budget} trials x {len(archs)} "
            "architectures")
    run = ctx.tree.start(f"stage-2 method {method} r{repeat}", parent_run_id=ctx.parent,
                         params={"stage2_method": method, "repeat": repeat},
                         tags={KIND_TAG: "stage2_method"})  # ended below, whatever happens
    callback = MLflowTrialCallback(ctx.tree, run, trial_name_fn=_name)
    job = TuneJob(
        name=f"{stages.safe_name(key)}-{time.strftime('%Y%m%d-%H%M%S')}", param_space={},
        storage=ctx.root, resources=space.resources.model_dump(), metric="best_val_loss",
        mode="min", num_samples=total, search_alg=searcher,
        scheduler=stages.stage2_scheduler(variant, "best_val_loss", "min"),
        callbacks=[callback, progress_callback(ctx.say, method, total, _name, 0)])
    status = "FAILED"
    try:
        log = trial_log(run_job(job), method).assign(repeat=repeat)
        status = "FINISHED"
        return log
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        callback.close()
        ctx.tree.end(run, status)
