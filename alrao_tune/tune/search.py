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

from ray.tune.search import Searcher


class PerArchSearch(Searcher):
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

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _told_before() -> contextlib.AbstractContextManager[None]:
    """Ignores Optuna's "trial already finished": with a persistent storage a trial can
    finish in the study after Tune saved the searcher and before a kill; the restored
    searcher then tells it again when the resumed trial re-reports its (identical) end."""
    import optuna

    return contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError)
