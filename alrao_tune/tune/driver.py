"""The one pipeline driver of ``screen`` and ``compare``.

:func:`run_pipeline` does what both jobs need around their own stages:

1. before anything is written: with ``resume``, the job's state is read
   (:class:`~alrao_tune.tune.resume.JobState`; nothing to resume, or other settings than the
   job was started with: ``ResumeError``) and every checkpoint a trial would continue from
   is read (``CheckpointError``); the tracking server must answer (``TrackingError``);
2. Ray is started or joined (:func:`~alrao_tune.tune.session.ray_session`), the MLflow
   experiment prepared, and the job's parent run created, or reopened on resume;
3. the job's body runs with a :class:`Pipeline`, which opens its stage runs and runs its
   Tune experiments (:meth:`Pipeline.stage`) with the MLflow and progress callbacks; a
   stage that finished before an interruption is read back instead of run again;
4. whatever happens, every run it opened ends and the state file records the outcome:
   FINISHED, FAILED, or KILLED on Ctrl-C (``KeyboardInterrupt``: resumable).

Progress lines go to ``progress`` (default: this module's logger at INFO); with ``print``
on a terminal each stage also gets a progress bar (:mod:`alrao_tune.tune.progress`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pandas as pd

from alrao_tune import tracking
from alrao_tune.schema import KIND_TAG
from alrao_tune.space import SearchSpace
from alrao_tune.tune import stages
from alrao_tune.tune.progress import progress_callback
from alrao_tune.tune.resume import (
    JobState,
    announce_resume,
    check_same_settings,
    reconcile_runs,
    resumed_frame,
    settings_fingerprint,
    trial_runs,
)
from alrao_tune.tune.runner import TuneJob, load_results, run_job, trials_frame
from alrao_tune.tune.session import ray_session
from alrao_tune.tune.storage import Location

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Trainable = Callable[[dict[str, Any]], None]
R = TypeVar("R")


def json_value(value: Any) -> Any:
    """A JSON-able scalar: numpy scalars become Python ones, NaN and +-inf become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Pipeline:
    """One invocation of a job inside :func:`run_pipeline`: its MLflow runs (``tree``), its
    state file and storage folder (``state``, ``root``), and what it measured.

    Attributes:
        run_ids: run key (``pipeline``, ``stage1``, ``compare``, ...) -> MLflow run id.
        timings: per stage: ``<label>_wall_s`` (this invocation's part), ``_trial_s`` (the
            trials' own time), ``_mlflow_values``, ``_mlflow_hook_s`` (in Tune's loop),
            ``_mlflow_write_s`` (on the writer thread); a finished stage's come from the
            state file.
    """

    def __init__(self, tree: Any, state: JobState, say: Progress, *, resume: bool,
                 trainable: Trainable | None = None) -> None:
        self.tree, self.state, self.say = tree, state, say
        self.resume, self.trainable = resume, trainable
        self.run_ids: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._open: list[str] = []

    @property
    def root(self) -> Location:
        """The storage folder of this job (Tune experiments, state file, figures)."""
        return self.state.root

    def open_run(self, key: str, name: str, parent: str | None = None,
                 params: Mapping[str, Any] | None = None) -> str:
        """The MLflow run ``key`` of this job (its kind tag: ``key``): created, or on
        resume reopened; a finished stage's run is left ended (closed if a kill left it
        RUNNING). Runs opened here end with the job, or with :meth:`end_run`."""
        run_id = self.state.run_ids.get(key) if self.resume else None
        if run_id is None:
            run_id = self.tree.start(name, parent_run_id=parent, params=params,
                                     tags={KIND_TAG: key})
            self.state.record(key, run_id)
        elif parent is not None and self.state.is_done(key):
            if self.tree.client.get_run(run_id).info.status == "RUNNING":
                self.tree.end(run_id, "FINISHED")  # killed after the stage was recorded
            self.run_ids[key] = run_id
            return run_id
        else:
            self.tree.reopen(run_id)
        self.run_ids[key] = run_id
        self._open.append(run_id)
        return run_id

    def end_run(self, run_id: str) -> None:
        """Ends a run opened by :meth:`open_run` FINISHED (its stage is over)."""
        if run_id in self._open:
            self.tree.end(run_id, "FINISHED")
            self._open.remove(run_id)

    def stage(self, job: TuneJob, parent: str, label: str, *,
              name_fn: Callable[[Any], str], total: int | None = None,
              what: str = "trials", log_table: bool = True) -> pd.DataFrame:
        """Runs the Tune experiment ``job`` (trials logged as child runs of ``parent``) and
        returns its trials table; a stage that finished before an interruption is read
        back from its experiment folder instead.

        Args:
            name_fn: the MLflow run name (and progress name) of a Tune trial.
            total: trials to expect, for the progress lines (default: the grid's size).
            what: what the progress lines call the trials (``trials``, ``runs``).
            log_table: also log the table as ``trials-<label>.csv`` on ``parent``.
        """
        if self.resume and self.state.is_done(label):
            frame = trials_frame(load_results(job), trial_runs(self.tree, parent))
            reconcile_runs(self.tree, parent, frame)
            self.timings.update(self.state.timings(label))
            self.say(f"  [{label}] finished before the interruption: {len(frame)} {what} "
                     f"read from {job.path}")
            return frame
        frame = self._run_stage(job, parent, label, name_fn, total, what)
        if log_table:
            self.tree.log_text(parent, frame.to_csv(index=False),
                               f"trials-{stages.safe_name(label)}.csv")
        self.state.mark_done(label, {k: json_value(v) for k, v in self.timings.items()
                                     if k.startswith(f"{label}_")})
        return frame

    def _run_stage(self, job: TuneJob, parent: str, label: str, name_fn: Callable[[Any], str],
                   total: int | None, what: str) -> pd.DataFrame:
        from alrao_tune.tracking.callback import MLflowTrialCallback

        callback = MLflowTrialCallback(self.tree, parent, trial_name_fn=name_fn)
        done = announce_resume(job.path, label, self.say, what) if self.resume else 0
        job.callbacks = [callback, progress_callback(self.say, label, total, name_fn, done)]
        t0 = time.perf_counter()
        try:
            grid = run_job(job, resume=self.resume, trainable=self.trainable)
        finally:
            callback.close()
        wall = time.perf_counter() - t0
        frame = (resumed_frame(self.tree, parent, grid, callback.run_ids, self.say)
                 if self.resume else trials_frame(grid, callback.run_ids))
        stats = callback.stats
        self.timings.update({
            f"{label}_wall_s": wall,  # resumed: this invocation's part only
            f"{label}_trial_s": float(frame["time_total_s"].fillna(0).sum()),
            f"{label}_mlflow_values": float(stats["values"]),
            f"{label}_mlflow_hook_s": float(stats["hook_s"]),  # blocking Tune's loop
            f"{label}_mlflow_write_s": float(stats["write_s"]),  # background thread
        })
        return frame

    def run(self, kind: str, name: str, params: Mapping[str, Any],
            body: Callable[[Pipeline, str], R], *, parent_run_id: str | None = None) -> R:
        """Opens the job's parent run (key and kind tag ``kind``; a child of
        ``parent_run_id`` when given, e.g. a ``compare`` strategy's run), runs
        ``body(self, parent_run_id)``, then ends every open run and the state with the
        outcome (FINISHED, FAILED, or KILLED on ``KeyboardInterrupt``)."""
        parent = self.open_run(kind, name, parent_run_id, params)
        status = "FAILED"
        try:
            result = body(self, parent)
            status = "FINISHED"
            return result
        except KeyboardInterrupt:
            status = "KILLED"  # resumable: `--resume` finishes it
            raise
        finally:
            for run_id in reversed(self._open):
                self.tree.end(run_id, status)
            self.state.finish(status)


def run_pipeline(kind: str, space: SearchSpace, settings: Any,
                 body: Callable[[Pipeline, str], R], *, name: str,
                 params: Mapping[str, Any], stage_labels: Sequence[str],
                 tracking_uri: str | None = None, storage: str | Any = None,
                 address: str | None = None, resume: bool = False,
                 progress: Progress | None = None, trainable: Trainable | None = None) -> R:
    """Starts (or with ``resume`` continues) the newest job of ``kind`` for ``space`` under
    ``storage`` and runs ``body`` in it (see the module docstring).

    Args:
        kind: ``pipeline`` (a screening) or ``compare``: the parent run's key and kind tag,
            and which jobs ``resume`` looks at.
        settings: what the job was started with (its fingerprint is kept in the state
            file; resuming with other settings fails).
        body: ``body(pipeline, parent_run_id)``: the job's own work.
        name, params: the parent run's name and params.
        stage_labels: the job's stages (Tune experiment folders), whose checkpoints a
            resume reads first.
        trainable: the Tune trainable of every trial (default: ``train_trial``).

    Raises:
        ResumeError, CheckpointError, TrackingError, ClusterError: before anything is
            written (the last one before any MLflow run is created).
    """
    say = progress or log.info
    base = Location.parse(storage) / stages.safe_name(space.name)
    fingerprint = settings_fingerprint(settings)
    state = None
    if resume:  # reads only
        state = JobState.load(base, kind)
        check_same_settings(state.data.get("settings"), fingerprint, state.root)
        state.check_checkpoints(stage_labels, say)
    uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_reachable(uri)
    with ray_session(address, resources=space.resources.model_dump()):
        tree = tracking.RunTree(uri, tracking.prepare_store(uri, space.name))
        if state is None:
            state = JobState.create(base, kind, fingerprint)
        pipeline = Pipeline(tree, state, say, resume=resume, trainable=trainable)
        return pipeline.run(kind, name, params, body)
