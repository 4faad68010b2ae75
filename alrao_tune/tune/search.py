"""One Optuna search per architecture, all inside ONE Ray Tune experiment.

Stage 2 tunes each top-k architecture with its own Optuna study (``OptunaSearch``: its
own sampler state, its own first point from the Alrao effective learning rate). Running
a separate ``Tuner`` per architecture would pay Tune's start-up and fresh worker
processes k times and leave cores idle at each hand-over; :class:`PerArchSearch` instead
hands out trials from the k searchers in turn, so one experiment with reused actors runs
them all, and each study only ever sees its own architecture's results.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Mapping
from typing import Any

from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher


class _PickledState:
    """Tune's save/restore of a searcher or scheduler: its whole state, pickled."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class PerArchSearch(_PickledState, Searcher):
    """Round-robin over per-architecture searchers, each with its own trial budget.

    Args:
        searchers: ``{arch_name: OptunaSearch}`` (each built with its own space,
            metric and mode).
        constants: ``{arch_name: config}`` merged into every suggestion for that arch
            (the trial's ``train`` dict, ``arch_name``, ``stage``).
        budget: trials per architecture.
        metric, mode: the experiment's metric and mode (the searchers' own are used).
        studies: ``{arch_name: (optuna storage, study name)}``, the study each searcher
            was built on. Before an architecture's first suggestion its study's RUNNING
            trials (left by a kill before this experiment started) end FAIL and its
            ``first_points`` entry is enqueued unless the study has it already; a searcher
            restored by ``Tuner.restore`` (its state pickled) does neither again.
        first_points: ``{arch_name: params}`` evaluated first (the Alrao effective rate).
    """

    def __init__(self, searchers: Mapping[str, Searcher], constants: Mapping[str, dict],
                 budget: int, metric: str, mode: str,
                 studies: Mapping[str, tuple[Any, str]] | None = None,
                 first_points: Mapping[str, dict] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self._studies = dict(studies or {})
        self._first = {k: dict(v) for k, v in (first_points or {}).items() if v}
        self._prepared: set[str] = set()
        self._searchers = dict(searchers)
        self._constants = {k: dict(v) for k, v in constants.items()}
        self._left = {name: budget for name in self._searchers}
        self._order = list(self._searchers)
        self._next = 0
        self._owner: dict[str, str] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # each sub-searcher was configured at construction

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(len(self._order)):
            name = self._order[self._next % len(self._order)]
            self._next += 1
            if self._left[name] <= 0:
                continue
            self._prepare(name)
            suggestion = self._searchers[name].suggest(trial_id)
            if suggestion is None:  # that searcher waits for results; try another
                continue
            if suggestion == Searcher.FINISHED:
                self._left[name] = 0
                continue
            self._left[name] -= 1
            self._owner[trial_id] = name
            return {**self._constants[name], **suggestion}
        return Searcher.FINISHED if all(v <= 0 for v in self._left.values()) else None

    def _prepare(self, name: str) -> None:
        if name in self._prepared or name not in self._studies:
            return
        import optuna

        from alrao_tune.tune.optuna_storage import enqueue_once, fail_orphans

        storage, study_name = self._studies[name]
        study = optuna.load_study(study_name=study_name, storage=storage)
        fail_orphans(study)
        if name in self._first:
            enqueue_once(study, self._first[name])
        self._prepared.add(name)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            with _told_before():
                self._searchers[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._owner:
            with _told_before():
                self._searchers[self._owner[trial_id]].on_trial_complete(trial_id, result,
                                                                         error)



def _told_before() -> contextlib.AbstractContextManager[None]:
    """Ignores Optuna's "trial already finished": with a persistent storage a trial can
    finish in the study after Tune saved the searcher and before a kill; the restored
    searcher then tells it again when the resumed trial re-reports its (identical) end."""
    import optuna

    return contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError)


class PerArchScheduler(_PickledState, FIFOScheduler):
    """ASHA per architecture inside stage 2's one experiment (``stage2.scheduler: asha``).

    Ray's ``ASHAScheduler`` compares every trial of an experiment with every other, but
    stage 2's trials of different architectures are not comparable: a weak architecture's
    good rate would be stopped by a strong architecture's rung. Each architecture here has
    its own ``ASHAScheduler`` (over ``training_iteration``, ``max_t`` epochs, its grace period
    and reduction factor), created when its first trial arrives; the trial's architecture
    is the ``arch_name`` of its config.
    """

    def __init__(self, max_t: int, metric: str, mode: str, *, grace_period: int = 1,
                 reduction_factor: float = 4) -> None:
        super().__init__()
        self._metric, self._mode = metric, mode
        self._options = {"max_t": max_t, "grace_period": min(grace_period, max_t),
                         "reduction_factor": reduction_factor}
        self._by_arch: dict[str, Any] = {}
        self._arch_of: dict[str, str] = {}
        self._live: set[str] = set()  # trials added to their ASHA and not yet ended there

    def set_search_properties(self, metric: str | None, mode: str | None,
                              **spec: Any) -> bool:
        return True  # set at construction: the experiment's own metric and mode

    def _asha(self, trial: Any) -> Any:
        from ray.tune.schedulers import ASHAScheduler

        from alrao_tune.tune.trainable import trial_config

        arch = self._arch_of.get(trial.trial_id)
        if arch is None:
            arch = str(trial_config(trial.config).get("arch_name", ""))
            self._arch_of[trial.trial_id] = arch
        if arch not in self._by_arch:
            self._by_arch[arch] = ASHAScheduler(
                time_attr="training_iteration", metric=self._metric, mode=self._mode,
                **self._options)
        return self._by_arch[arch]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)
        self._live.add(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self._live:
            self._live.discard(trial.trial_id)
            self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self._live:
            self._live.discard(trial.trial_id)
            self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "per-architecture ASHA: " + ", ".join(sorted(self._by_arch))

