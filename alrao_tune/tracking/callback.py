"""``MLflowTrialCallback``: a driver-side ``ray.tune.Callback`` logging trials to MLflow.

Every trial gets a child run of a stage run (see :class:`alrao_tune.tracking.runs.RunTree`);
each ``tune.report`` is written with ``MlflowClient.log_batch`` on one background thread:
workers need no MLflow access and a slow store does not hold up Tune's event loop (a
function trial waits in ``tune.report`` until the driver has handled it).

Logged per result: every number (nested dicts as ``a/b``) at step ``epoch`` when
reported, else ``training_iteration``; ``step_metrics = {name: [[step, value], ...]}``
expanded at its own steps; strings (``status``) as tags. Tune's own keys are skipped
except ``time_total_s``. NaN is stored as NaN, +-inf as MLflow's +-1.797e308; both are
counted in the tag ``alrao_tune.nonfinite_values``. A result whose step is not past the
trial's last logged step (a trial restored from a checkpoint re-reporting it) is skipped
and counted in ``alrao_tune.replayed_results``: every value arrives exactly once, across
retries and ``Tuner.restore`` too. A restored trial's first result also carries the
records of the epochs in its checkpoint (``RESTORED_KEY``); those past the last logged
step are logged then (counted in ``alrao_tune.backfilled_epochs``), so no epoch is missing
when a resume continues from a newer checkpoint than the saved state names. The last step
logged is read back from the run itself: the step of its newest ``time_total_s`` value
(Tune puts it in every result, and a flush writes it after the result's other values), or
the tag ``alrao_tune.last_step`` if that is higher. MLflow's SQL store commits a batch's
metrics and its tags in separate transactions, so the tag alone can lag behind values a
killed driver had stored.
Values are buffered (``flush_every``, ``flush_interval_s``), but every buffer is written,
and waited for, in ``get_state``, which Tune calls while saving its experiment state and
before syncing it to storage: a driver killed with SIGKILL loses no value that a resumed
trial will not report again.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from ray.tune import Callback
except ImportError as exc:  # pragma: no cover - ray is a dependency
    raise ImportError("MLflowTrialCallback needs Ray Tune: pip install 'ray[tune]'") from exc

from alrao_tune.schema import (
    BACKFILLED_TAG,
    ERROR_TAG,
    FAILURES_TAG,
    LAST_ERROR_TAG,
    LAST_STEP_TAG,
    NONFINITE_TAG,
    REPLAYED_TAG,
    RESTORED_KEY,
    STEP_METRICS_KEY,
    STOPPED_TAG,
    TRIAL_ID_TAG,
)
from alrao_tune.tracking.runs import RunTree, TrackingError, clip, flatten, sanitize_metric_name
from alrao_tune.tracking.writer import BackgroundWriter

__all__ = ["MLflowTrialCallback", "STEP_METRICS_KEY", "TUNE_RESULT_KEYS"]

# Logged at every result's step and written after that result's other values: the step of
# its newest value is the last step whose values are all stored.
MARKER_KEY = "time_total_s"

log = logging.getLogger(__name__)

# Keys Tune adds to every result; of these only ``time_total_s`` is logged.
TUNE_RESULT_KEYS = frozenset((
    "trial_id", "experiment_id", "experiment_tag", "date", "timestamp", "time_this_iter_s",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "training_iteration", "done", "checkpoint_dir_name", "should_checkpoint", "trainable_name",
    "timesteps_total", "episodes_total", "timesteps_since_restore", "episodes_this_iter",
    "timesteps_this_iter", "__duplicate__", "__trial_info__"))


@dataclass
class _TrialRun:
    """What the callback keeps per trial between results."""

    run_id: str
    last_step: int | None = None
    buffer: list[tuple[str, float, int, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # to write at the next flush
    strings: dict[str, str] = field(default_factory=dict)
    last_flush: float = field(default_factory=time.monotonic)
    nonfinite: int = 0
    replayed: int = 0
    backfilled: int = 0  # epochs logged from a restored checkpoint's records
    stopped: bool = False  # Tune set ``done`` on the last result (scheduler or stopper)


def _result_step(result: Mapping[str, Any]) -> int:
    epoch = result.get("epoch")
    if isinstance(epoch, numbers.Real) and not isinstance(epoch, bool) and math.isfinite(epoch):
        return int(epoch)
    return int(result.get("training_iteration") or 0)


def _error_text(trial: Any) -> str:
    """The trial's error trace: Tune writes ``trial.error_file`` before ``on_trial_error``."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text(errors="replace")
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - best effort
        text = None
    return str(text) if text else "unknown error (Tune wrote no error file)"


def _error_summary(text: str) -> str:
    """The last line of a traceback (``RuntimeError: boom``), else the text itself."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return clip(lines[-1] if lines else text, 1000)


class MLflowTrialCallback(Callback):
    """A driver-side ``ray.tune.Callback``: logs every Tune trial as a child run of
    ``parent_run_id`` (see the module docstring).

    Runs end FINISHED (also when ASHA or a stopper ended the trial: tag
    ``alrao_tune.stopped_early=true``), FAILED (tag ``alrao_tune.error`` and ``error.txt``)
    or KILLED (still open when the experiment ended: never left RUNNING). A retried or
    resumed trial continues its run (found by the tag ``alrao_tune.trial_id``).

    Args:
        tree: the store and experiment the trial runs go to.
        parent_run_id: the stage run.
        trial_name_fn: ``trial -> run name`` (default: the trial id).
        extra_tags: tags set on every trial run.
        flush_every: a trial's buffered values are written once there are this many ...
        flush_interval_s: ... or its last write is this old (0: every result).
        param_keys: flattened config keys (or their prefixes) logged as params; None: all.
        background: write on a background thread (default) instead of in Tune's loop.

    Attributes:
        run_ids: trial id -> MLflow run id, for every trial seen.
        stats: how much was logged and what it cost (see :attr:`stats`).
    """

    def __init__(self, tree: RunTree, parent_run_id: str, *,
                 trial_name_fn: Callable[[Any], str] | None = None,
                 extra_tags: Mapping[str, Any] | None = None, flush_every: int = 1000,
                 flush_interval_s: float = 2.0, param_keys: Sequence[str] | None = None,
                 background: bool = True) -> None:
        self.tree, self.parent_run_id = tree, parent_run_id
        self.trial_name_fn, self.extra_tags = trial_name_fn, dict(extra_tags or {})
        self.flush_every, self.flush_interval_s = flush_every, flush_interval_s
        self.param_keys = tuple(param_keys) if param_keys is not None else None
        self.background = background
        self.run_ids: dict[str, str] = {}
        self._init_runtime()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into tuner.pkl
        runtime = ("_trials", "_names", "_writer", "_stats")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._trials: dict[str, _TrialRun] = {}
        self._names: dict[str, str] = {}
        self._writer = BackgroundWriter(self.background)
        self._stats: dict[str, float] = {"values": 0, "hook_s": 0.0}

    @property
    def stats(self) -> dict[str, float]:
        """Values logged; seconds in Tune's loop (``hook_s``) and writing (``write_s``);
        MLflow ``calls`` and failed ``errors`` (logged as warnings)."""
        return {**self._stats, **self._writer.stats}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Creates the trial's run, or reopens it when the trial restarts or resumes."""
        self._open(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any,
                        result: dict, **info: Any) -> None:
        """Buffers the result's values; writes them when due."""
        start = time.perf_counter()
        run = self._open(trial)
        step = _result_step(result)
        self._backfill(run, result, step)
        if run.last_step is not None and step <= run.last_step:
            run.replayed += 1
        else:
            run.last_step, run.stopped = step, bool(result.get("done"))
            self._collect(run, result, step)
            if (len(run.buffer) >= self.flush_every
                    or time.monotonic() - run.last_flush >= self.flush_interval_s):
                self._flush(run)
        self._stats["hook_s"] += time.perf_counter() - start

    def _backfill(self, run: _TrialRun, result: Mapping[str, Any], step: int) -> None:
        """Logs the epochs of a restored trial's checkpoint (``RESTORED_KEY``) that are past
        the run's last logged step and before this result's: values a SIGKILL kept from
        MLflow when the resume had to continue from a newer checkpoint than the one Tune's
        saved state names. Their ``time_total_s`` is the trial's time at the restore."""
        records = result.get(RESTORED_KEY)
        if not isinstance(records, Sequence) or isinstance(records, str):
            return
        at_restore = result.get(MARKER_KEY, 0.0) - result.get("time_this_iter_s", 0.0)
        for record in records:
            s = _result_step(record) if isinstance(record, Mapping) else None
            if s is not None and s < step and (run.last_step is None or s > run.last_step):
                run.last_step = s
                self._collect(run, {**record, MARKER_KEY: at_restore}, s)
                run.backfilled += 1
                run.tags[BACKFILLED_TAG] = str(run.backfilled)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Writes buffers older than ``flush_interval_s`` (long epochs stay visible)."""
        now = time.monotonic()
        for run in self._trials.values():
            if run.buffer and now - run.last_flush >= self.flush_interval_s:
                self._flush(run)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Notes the failure; the run stays open for the retry."""
        if (run := self._trials.get(trial.trial_id)) is not None:
            run.tags[FAILURES_TAG] = str(getattr(trial, "num_failures", 1))
            run.tags[LAST_ERROR_TAG] = _error_summary(_error_text(trial))
            self._flush(run)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Ends the run FINISHED (``stopped_early`` unless the trainable said it was done)."""
        if (run := self._trials.get(trial.trial_id)) is not None:
            stopped = run.stopped and run.strings.get("status", "running") == "running"
            run.tags[STOPPED_TAG] = str(stopped).lower()
            self._finish(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Ends the run FAILED with the error in a tag and the trace in ``error.txt``."""
        run, text = self._open(trial), _error_text(trial)
        run.tags[ERROR_TAG] = _error_summary(text)
        self._writer.submit(self.tree.log_text, run.run_id, text, "error.txt")
        self._finish(trial.trial_id, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Ends open runs: FINISHED + ``stopped_early`` for trials Tune TERMINATED without
        ``on_trial_complete`` (``time_budget_s`` ran out), else KILLED; waits for writes."""
        for trial in trials:
            if trial.trial_id in self._trials and trial.status == "TERMINATED":
                self._trials[trial.trial_id].tags[STOPPED_TAG] = "true"
                self._finish(trial.trial_id, "FINISHED")
        self.close()

    def get_state(self) -> dict[str, Any]:
        """Kept in Tune's experiment checkpoint, for ``Tuner.restore``.

        Tune calls this while it saves its experiment state into the driver's staging
        folder, before it syncs that state (which names each trial's newest checkpoint)
        to the storage a restore reads. So every buffered value is written, and waited
        for, here: a driver killed after the sync resumes trials from checkpoints whose
        values are all stored, and one killed before it resumes from older checkpoints
        whose replayed results are skipped (see the module docstring). One wait per
        experiment save, not one per trial checkpoint.
        """
        start = time.perf_counter()
        for run in self._trials.values():
            self._flush(run)
        self._writer.wait()
        self._stats["hook_s"] += time.perf_counter() - start
        return {"run_ids": dict(self.run_ids)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores the run ids of a resumed experiment."""
        self.run_ids.update(state.get("run_ids", {}))

    def close(self) -> None:
        """Ends every still-open run KILLED and waits until everything is written; raises
        the store's fatal error (e.g. a server that never came back) if there was one."""
        try:
            for trial_id in list(self._trials):
                self._finish(trial_id, "KILLED")
        finally:
            self._writer.close()
        if self._writer.fatal is not None:
            raise self._writer.fatal

    def _open(self, trial: Any) -> _TrialRun:
        if (run := self._trials.get(trial.trial_id)) is None:
            run_id, last_step = self._writer.call(self._find_or_start, trial)
            self.run_ids[trial.trial_id] = run_id
            run = self._trials[trial.trial_id] = _TrialRun(run_id, last_step)
        return run

    def _find_or_start(self, trial: Any) -> tuple[str, int | None]:
        """(On the writer thread.) The trial's earlier run, reopened, else a new run."""
        run_id = self.run_ids.get(trial.trial_id) or self.tree.find_run(
            parent_run_id=self.parent_run_id, tag_key=TRIAL_ID_TAG, tag_value=trial.trial_id)
        if run_id:
            try:
                tags = self.tree.reopen(run_id)
                if ERROR_TAG in tags:  # a resumed errored trial: the error is history now
                    self.tree.set_tags(run_id, {LAST_ERROR_TAG: tags[ERROR_TAG]})
                    self.tree.client.delete_tag(run_id, ERROR_TAG)
                steps = [int(tags[LAST_STEP_TAG])] if LAST_STEP_TAG in tags else []
                steps += [m.step for m in self.tree.client.get_metric_history(run_id,
                                                                              MARKER_KEY)]
                return run_id, max(steps) if steps else None
            except Exception as exc:  # noqa: BLE001 - e.g. the run was deleted
                log.warning("cannot reopen MLflow run %s (%s); starting a new run", run_id, exc)
        name = self.trial_name_fn(trial) if self.trial_name_fn else str(trial.trial_id)
        params = flatten(trial.config or {})
        if self.param_keys is not None:
            params = {k: v for k, v in params.items()
                      if any(k == p or k.startswith(p + ".") for p in self.param_keys)}
        tags = {**self.extra_tags, TRIAL_ID_TAG: trial.trial_id}
        try:
            return self.tree.start(name, parent_run_id=self.parent_run_id, params=params,
                                   tags=tags), None
        except Exception as exc:
            raise TrackingError(f"cannot create the MLflow run of trial {name}: {exc}") from exc

    def _collect(self, run: _TrialRun, result: Mapping[str, Any], step: int) -> None:
        now, before = int(time.time() * 1000), len(run.buffer)
        for key, value in result.items():
            if key in TUNE_RESULT_KEYS or key == RESTORED_KEY:
                continue
            if isinstance(value, str):
                if run.strings.get(key) != value:
                    run.strings[key] = run.tags[key] = value
            elif key == STEP_METRICS_KEY and isinstance(value, Mapping):
                for name, pairs in value.items():
                    try:
                        for s, v in pairs:
                            self._add(run, self._name(name), v, int(s), now)
                    except (TypeError, ValueError):
                        log.warning("step_metrics[%r] is not [[step, value], ...]: skipped", name)
            elif isinstance(value, Mapping):
                for sub, v in flatten(value, key, sep="/").items():
                    self._add(run, self._name(sub), v, step, now)
            else:
                self._add(run, self._name(key), value, step, now)
        self._stats["values"] += len(run.buffer) - before

    def _name(self, key: str) -> str:
        if (name := self._names.get(key)) is None:
            name = self._names[key] = sanitize_metric_name(key)
        return name

    @staticmethod
    def _add(run: _TrialRun, name: str, value: Any, step: int, now: int) -> None:
        if isinstance(value, numbers.Real):
            value = float(value)
            if not math.isfinite(value):
                run.nonfinite += 1
            run.buffer.append((name, value, step, now))

    def _flush(self, run: _TrialRun) -> None:
        entries, run.buffer, run.last_flush = run.buffer, [], time.monotonic()
        entries.sort(key=lambda e: e[0] == MARKER_KEY)  # stable: markers last, see MARKER_KEY
        if entries and run.last_step is not None:
            run.tags[LAST_STEP_TAG] = str(run.last_step)
        if entries or run.tags:
            tags, run.tags = run.tags, {}
            self._writer.submit(self.tree.log_entries, run.run_id, entries, tags)

    def _finish(self, trial_id: str, status: str) -> None:
        if (run := self._trials.pop(trial_id, None)) is None:
            return
        counts = {NONFINITE_TAG: run.nonfinite, REPLAYED_TAG: run.replayed}
        run.tags.update({k: str(n) for k, n in counts.items() if n})
        run.tags.update(run.strings)
        self._flush(run)
        self._writer.submit(self.tree.end, run.run_id, status)
