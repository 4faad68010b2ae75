"""What ``--resume`` needs: a job's state file (:class:`JobState`), and the MLflow runs of a
resumed Tune experiment brought back to one ended run per trial (``screen`` and
``compare``).

The rules are those of ``alrao_tune.tune.screen``'s module docstring: a trial run left
RUNNING whose trial had ended is closed (FAILED with its error for an errored trial), and
a run whose trial Tune never saved is ended KILLED, tagged ``alrao_tune.orphaned`` and
deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from alrao_tune.errors import AlraoTuneError
from alrao_tune.schema import ERROR_TAG, ORPHAN_TAG, PARENT_TAG, TRIAL_ID_TAG
from alrao_tune.tune.runner import check_resumable, experiment_trials, trials_frame
from alrao_tune.tune.storage import Location

Progress = Callable[[str], None]


def announce_resume(path: Location, label: str, say: Progress, what: str = "trials") -> int:
    """Says how many trials of the Tune experiment at ``path`` had ended; returns that
    number (0 when the experiment never got as far as saving its state)."""
    if not (path / "tuner.pkl").exists():
        return 0
    trials = experiment_trials(path)
    done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    say(f"  [{label}] resuming {path}: {done} of {len(trials)} {what} had ended; the others "
        "continue from their last checkpoint")
    return done


def resumed_frame(tree: Any, parent: str, grid: Any, run_ids: Mapping[str, str],
                  say: Progress | None = None) -> pd.DataFrame:
    """The trial table of a resumed experiment: the run ids of the trials that ended
    before the interruption come from MLflow (tag ``alrao_tune.trial_id`` under
    ``parent``), then the runs are reconciled (:func:`reconcile_runs`)."""
    frame = trials_frame(grid, {**trial_runs(tree, parent), **run_ids})
    reconcile_runs(tree, parent, frame, say)
    return frame


def stage_children(tree: Any, stage_run: str) -> list[Any]:
    """The active trial runs under ``stage_run``, newest first (all pages)."""
    runs, token = [], None
    while True:
        page = tree.client.search_runs(
            [tree.experiment_id], f"tags.`{PARENT_TAG}` = '{stage_run}'", max_results=1000,
            order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_runs(tree: Any, stage_run: str) -> dict[str, str]:
    """Trial id -> its MLflow run under ``stage_run`` (the newest one, by the trial tag)."""
    out: dict[str, str] = {}
    for run in stage_children(tree, stage_run):
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        if trial_id:
            out.setdefault(trial_id, run.info.run_id)
    return out


def reconcile_runs(tree: Any, stage_run: str, frame: pd.DataFrame,
                    say: Progress | None = None) -> dict[str, int]:
    """After a resumed stage: one active, ended MLflow run per trial (the rules in the
    module docstring); returns how many runs it ``closed`` and how many ``orphans`` it
    deleted."""
    keep = {t: r for t, r in zip(frame["trial_id"], frame["run_id"]) if isinstance(r, str)}
    status = dict(zip(frame["trial_id"], frame["status"]))
    errors = dict(zip(frame["trial_id"], frame["error"]))
    closed = orphans = 0
    for run in stage_children(tree, stage_run):
        run_id, trial_id = run.info.run_id, run.data.tags.get(TRIAL_ID_TAG)
        if trial_id is not None and keep.get(trial_id) == run_id:
            if run.info.status == "RUNNING":  # its trial ended before the interruption
                if status.get(trial_id) == "error":
                    tree.set_tags(run_id, {ERROR_TAG: errors.get(trial_id) or "error"})
                tree.end(run_id, "FAILED" if status.get(trial_id) == "error" else "FINISHED")
                closed += 1
            continue
        if run.info.status == "RUNNING":
            tree.end(run_id, "KILLED")
        tree.set_tags(run_id, {ORPHAN_TAG: "trial unknown to the resumed Tune experiment "
                               "(its configuration ran again as another trial)"})
        tree.client.delete_run(run_id)
        orphans += 1
    if say is not None and (closed or orphans):
        say(f"  resume: closed {closed} trial run(s) left RUNNING, deleted {orphans} orphaned "
            "trial run(s)")
    return {"closed": closed, "orphans": orphans}


class ResumeError(AlraoTuneError, RuntimeError):
    """``--resume`` found nothing (or nothing readable) to resume."""


def settings_fingerprint(settings: Any) -> str:
    """A short digest of what a job was started with (the resolved space, or the trial
    configs), stored in its state file: ``--resume`` with other settings (another space
    file, other ``--set`` flags) would hand Tune a different experiment."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_settings(saved: str | None, now: str, where: Any) -> None:
    """Raises ResumeError when the job at ``where`` was started with other settings
    (``saved`` None: a state file written before fingerprints, not checked)."""
    if saved is not None and saved != now:
        raise ResumeError(
            f"cannot resume {where}: it was started with other settings (space file or "
            "--set flags) than this command's; resume with the same ones, or run without "
            "--resume to start anew.")


STATE_FILE = "pipeline.json"  # in every job's folder: see JobState
_FOLDER_PREFIX = {"pipeline": "", "compare": "compare-"}
_JOB_NAME = {"pipeline": "screening", "compare": "comparison"}


class JobState:
    """A job's state file ``<root>/pipeline.json``, one format for screenings and
    comparisons: ``kind`` (``pipeline`` | ``compare``), ``status`` (RUNNING, FINISHED,
    FAILED, KILLED), ``run_ids`` (the MLflow runs of the job, by key), ``done`` (the stages
    that finished, with their timings) and ``settings`` (:func:`settings_fingerprint`).

    A job's folder is ``<base>/<stamp>`` for a screening and ``<base>/compare-<stamp>`` for
    a comparison; ``<base>/LATEST`` (``LATEST-compare``) names the newest one, which is what
    ``--resume`` continues.
    """

    def __init__(self, root: Location, data: dict[str, Any]) -> None:
        self.root, self.data = root, data

    @property
    def run_ids(self) -> dict[str, str]:
        return self.data.setdefault("run_ids", {})

    @staticmethod
    def _pointer(base: Location, kind: str) -> Location:
        return base / ("LATEST" if kind == "pipeline" else f"LATEST-{kind}")

    @classmethod
    def load(cls, base: Location, kind: str) -> JobState:
        """The newest job of ``kind`` under ``base``, to resume; reads only.

        Raises:
            ResumeError: nothing there, unreadable, or it FINISHED.
        """
        job, latest = _JOB_NAME[kind], cls._pointer(base, kind)
        if not latest.exists():
            raise ResumeError(f"nothing to resume under {base}: no earlier {job} of this "
                              "space there; run it without --resume.")
        root = base / latest.read_text().strip()
        try:
            state = cls(root, json.loads((root / STATE_FILE).read_text()))
        except (OSError, ValueError) as err:  # pyarrow's errors are OSError too
            raise ResumeError(f"cannot resume from {root}: {err}") from err
        if state.data.get("status") == "FINISHED":
            raise ResumeError(f"nothing to resume under {base}: the newest {job} "
                              f"({root.name}) finished; run without --resume to start a new "
                              "one.")
        return state

    @classmethod
    def create(cls, base: Location, kind: str, settings: str | None = None) -> JobState:
        """A fresh job's folder, named in the ``LATEST`` pointer of its kind; ``settings``:
        its :func:`settings_fingerprint`."""
        stamp = _FOLDER_PREFIX[kind] + time.strftime("%Y%m%d-%H%M%S")
        root, n = base / stamp, 1
        while root.exists():
            root, n = base / f"{stamp}-{n}", n + 1
        root.mkdir()
        cls._pointer(base, kind).write_text(root.name)
        state = cls(root, {"kind": kind, "status": "RUNNING", "run_ids": {}, "done": {},
                           "settings": settings})
        state._write()
        return state

    def check_checkpoints(self, stages: Sequence[str],
                          say: Callable[[str], None] | None = None) -> None:
        """Raises CheckpointError when a checkpoint a trial would resume from is unreadable
        (in every stage of ``stages`` that did not finish); reads only."""
        for stage in stages:
            if not self.is_done(stage) and (self.root / stage).is_dir():
                check_resumable(self.root / stage, say)

    def is_done(self, stage: str) -> bool:
        return stage in self.data.get("done", {})

    def timings(self, stage: str) -> dict[str, float]:
        saved = self.data.get("done", {}).get(stage, {})
        return {k: float(v) for k, v in saved.items() if isinstance(v, (int, float))}

    def mark_done(self, stage: str, timings: dict[str, float]) -> None:
        self.data.setdefault("done", {})[stage] = dict(timings)
        self._write()

    def record(self, key: str, run_id: str) -> None:
        self.run_ids[key] = run_id
        self._write()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self._write()

    def _write(self) -> None:
        (self.root / STATE_FILE).write_text(json.dumps(self.data, indent=2))
