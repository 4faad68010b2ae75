"""The screening pipeline: validate -> stage 1 (Alrao) -> top-k -> stage 2 (Optuna) -> leaderboard.

Everything is tracked in MLflow as ``pipeline run -> stage run -> one run per trial``,
logged from the driver; trials, checkpoints and Tune state live under ``storage`` (a
local or shared folder, or a URI such as ``s3://bucket/prefix``: see
:mod:`alrao_tune.tune.storage`).

Resume (``resume=True``, ``alrao-tune screen SPACE --resume``) continues the newest
screening of the space under ``storage`` (``<storage>/<space>/LATEST`` names its folder,
whose ``pipeline.json`` holds its MLflow run ids and which stages finished):

* before anything is written, it fails with :class:`~alrao_tune.tune.resume.ResumeError`
  when there is nothing to resume (no earlier screening, or the newest one FINISHED) and with
  ``CheckpointError`` when a checkpoint that a trial would continue from is unreadable;
* a stage that finished is not run again: its trials are read from its Tune experiment
  folder (and its recorded timings from ``pipeline.json``);
* an interrupted stage continues through ``Tuner.restore``: finished trials are kept,
  unfinished (and errored) trials continue from their last checkpoint, in the SAME MLflow
  run (found by the tag ``alrao_tune.trial_id``; results the run already holds are
  skipped), and stage 2's searcher comes back with its Optuna studies and sampler state;
* the pipeline and stage runs the interruption left RUNNING are reopened and end
  FINISHED; a trial run still RUNNING whose trial had ended in Tune ends FINISHED (FAILED
  for an errored trial); a trial run whose trial Tune never saved in its experiment state
  (started in the last moments before the kill; the searcher hands out the same
  configuration again under a new trial id) is ended KILLED, tagged
  ``alrao_tune.orphaned`` and deleted (MLflow's soft delete: ``mlflow gc`` purges it), so
  the active runs hold exactly one run per trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alrao_tune.report import screening
from alrao_tune.schema import KIND_TAG, OPTUNA_STORAGE_TAG, STUDIES_TAG
from alrao_tune.space import SearchSpace, load_space
from alrao_tune.tune import optuna_storage, stages
from alrao_tune.tune.preflight import preflight
from alrao_tune.tune.progress import progress_callback
from alrao_tune.tune.resume import (
    PipelineState,
    announce_resume,
    check_same_settings,
    reconcile_runs,
    resumed_frame,
    settings_fingerprint,
    trial_runs,
)
from alrao_tune.tune.runner import (
    TuneJob,
    load_results,
    run_job,
    trials_frame,
)
from alrao_tune.tune.search import PerArchSearch
from alrao_tune.tune.storage import Location
from alrao_tune.tune.trainable import inject_faults

Progress = Callable[[str], None]


@dataclass
class ScreenResult:
    """What :func:`screen` returns (and writes to ``results.json``)."""

    space: str
    stage1_trials: pd.DataFrame
    stage1: pd.DataFrame
    stage2_trials: pd.DataFrame | None
    stage2: pd.DataFrame | None
    leaderboard: pd.DataFrame
    tracking_uri: str
    experiment_id: str
    run_ids: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    storage: str = ""
    model_uri: str | None = None  # the winner, logged with mlflow.pytorch (None: not logged)
    optuna_storage: str | None = None  # the RDB URL of stage 2's studies (None: in memory)
    optuna_studies: dict[str, str] = field(default_factory=dict)  # arch -> study name

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN/inf become None)."""
        def rows(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
            if frame is None:
                return []
            return [{k: _clean(v) for k, v in r.items()} for r in frame.to_dict("records")]

        return {
            "space": self.space, "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id, "run_ids": self.run_ids,
            "timings": {k: _clean(v) for k, v in self.timings.items()},
            "storage": self.storage, "model_uri": self.model_uri,
            "optuna_storage": self.optuna_storage, "optuna_studies": self.optuna_studies,
            "leaderboard": rows(self.leaderboard),
            "stage1": rows(self.stage1), "stage2": rows(self.stage2),
            "stage1_trials": rows(self.stage1_trials), "stage2_trials": rows(self.stage2_trials),
        }


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def screen(
    space: SearchSpace | str | Path,
    *,
    overrides: Sequence[str] = (),
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    address: str | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = print,
    register_model: str | None = None,
) -> ScreenResult:
    """Runs the two-stage screening of a search space; see the module docstring.

    The winner (the best trial of the leaderboard's first architecture) is logged as an
    MLflow model under the pipeline run (``ScreenResult.model_uri``; registered under
    ``register_model`` when given; :func:`alrao_tune.load_best` loads it back).

    Raises:
        SpaceError, ConfigError, DatasetError, ArchError, TrackingError: bad input, raised
            before anything is written to MLflow or storage.
    """
    from alrao_tune import tracking
    from alrao_tune.tune.session import ray_session

    say = progress or (lambda _msg: None)
    if not isinstance(space, SearchSpace):
        space = load_space(space, overrides)
    archs = space.architectures_resolved()
    preflight(space, archs)
    faults = _faults(archs)
    base = Location.parse(storage) / stages.safe_name(space.name)
    state = PipelineState.load(base) if resume else None  # reads only
    settings = settings_fingerprint(space.model_dump(mode="json"))
    if state is not None:
        check_same_settings(state.data.get("settings"), settings, state.root)
        state.check_checkpoints(say)  # reads only: a bad checkpoint fails before any write
    uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_reachable(uri)
    optuna_url = optuna_storage.storage_url(space.stage2.storage, uri, Location.parse(storage))
    optuna = optuna_storage.open_storage(optuna_url) if space.stage2.enabled else None
    with ray_session(address, resources=space.resources.model_dump()):
        experiment_id = tracking.prepare_store(uri, space.name)
        tree = tracking.RunTree(uri, experiment_id)
        pipe = _Pipeline(space, archs, tree, base, say, state, faults, settings)
        pipe.register_model, pipe.optuna, pipe.optuna_url = register_model, optuna, optuna_url
        result = pipe.run()
    result.tracking_uri = uri
    if output is not None:
        write_outputs(result, Path(output))
    return result


class _Pipeline:
    """One invocation of the screening, with its MLflow runs (closed on any exit)."""

    def __init__(self, space: SearchSpace, archs: list[dict[str, Any]], tree: Any,
                 base: Location, say: Progress, state: PipelineState | None = None,
                 faults: dict[str, str] | None = None, settings: str | None = None) -> None:
        self.space, self.archs, self.tree, self.say = space, archs, tree, say
        self.resume = state is not None
        self.state = state if state is not None else PipelineState.create(base, settings)
        self.faults = faults or {}
        self.run_ids: dict[str, str] = {}
        self.open_runs: list[str] = []
        self.timings: dict[str, float] = {}
        self.register_model: str | None = None
        self.optuna: Any = None  # the Optuna storage of stage 2's studies
        self.optuna_url: str | None = None
        self.studies: dict[str, str] = {}

    def run(self) -> ScreenResult:
        space, tree = self.space, self.tree
        pipeline_run = self._run("pipeline", f"screen {space.name}", None, _space_params(space))
        status = "FAILED"
        try:
            t1 = self._stage1(pipeline_run)
            s1 = screening.proxy_scores(t1, space.stage1.metric, space.stage1_mode)
            self.say(_format_stage1(s1, space.stage1.top_k))
            t2 = s2 = None
            if space.stage2.enabled:
                t2 = self._stage2(pipeline_run, s1)
                s2 = screening.best_trials(t2, space.stage2.metric, space.stage2_mode)
            mode = space.stage2_mode if s2 is not None else space.stage1_mode
            board = screening.leaderboard(s1, s2, mode)
            result = ScreenResult(space.name, t1, s1, t2, s2, board, "", tree.experiment_id,
                                  dict(self.run_ids), dict(self.timings), str(self.state.root))
            result.model_uri = self._log_winner(pipeline_run, board, t1, t2)
            result.optuna_storage, result.optuna_studies = self.optuna_url, self.studies
            _log_pipeline_artifacts(tree, pipeline_run, space, result)
            with _figures_folder(self.state.root) as folder:
                _log_figures(tree, pipeline_run, space, result, folder)
            status = "FINISHED"
            return result
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            for run_id in reversed(self.open_runs):
                tree.end(run_id, status)
            self.state.finish(status)

    def _log_winner(self, run_id: str, board: pd.DataFrame, t1: pd.DataFrame,
                    t2: pd.DataFrame | None) -> str | None:
        from alrao_tune.tune.winner import log_winner

        label, trials, s = ("stage2", t2, self.space.stage2) if t2 is not None \
            else ("stage1", t1, self.space.stage1)
        mode = self.space.stage2_mode if t2 is not None else self.space.stage1_mode
        trial = screening.winner_trial(board, trials, s.metric, mode)
        if trial is None:
            self.say("no winner to log: the first architecture has no usable trial")
            return None
        return log_winner(self.tree, run_id, self.state.root / label, trial,
                          self.register_model, self.say)

    def _run(self, key: str, name: str, parent: str | None, params: dict | None = None) -> str:
        """The run ``key`` of this screening: created, or on resume reopened (a finished
        stage's run is left as it is)."""
        run_id = self.state.run_ids.get(key) if self.resume else None
        if run_id is None:
            run_id = self.tree.start(name, parent_run_id=parent, params=params,
                                     tags={KIND_TAG: key.split(":")[0]})
            self.state.record(key, run_id)
        elif self.state.is_done(key):
            if self.tree.client.get_run(run_id).info.status == "RUNNING":
                self.tree.end(run_id, "FINISHED")  # killed after the stage was recorded
            self.run_ids[key] = run_id
            return run_id
        else:
            self.tree.reopen(run_id)
        self.run_ids[key] = run_id
        self.open_runs.append(run_id)
        return run_id

    def _end(self, run_id: str) -> None:
        if run_id in self.open_runs:
            self.tree.end(run_id, "FINISHED")
            self.open_runs.remove(run_id)

    def _stage1(self, pipeline_run: str) -> pd.DataFrame:
        space = self.space
        n = len(self.archs) * len(space.stage1.seeds)
        self.say(f"stage 1: {len(self.archs)} architectures x {len(space.stage1.seeds)} seed(s)"
                 f" = {n} Alrao trials")
        run = self._run("stage1", "stage1 (alrao)", pipeline_run)
        param_space = stages.stage1_param_space(space)
        if self.faults:  # test-only, see trainable.FAULT_KEY
            grid = param_space["trial"]["grid_search"]
            param_space["trial"]["grid_search"] = inject_faults(grid, self.faults)
        job = TuneJob(
            name="stage1", param_space=param_space,
            storage=self.state.root, resources=space.resources.model_dump(),
            metric=f"best_{space.stage1.metric}", mode=space.stage1_mode,
            scheduler=stages.stage1_scheduler(space))
        frame = self._stage_frame(job, run, "stage1")
        self._end(run)
        return frame

    def _stage2(self, pipeline_run: str, s1: pd.DataFrame) -> pd.DataFrame:
        space, s2 = self.space, self.space.stage2
        chosen = screening.top_k(s1, space.stage1.top_k)
        self.say(f"stage 2: Optuna search over the learning rate for the top {len(chosen)}: "
                 f"{', '.join(chosen)} ({s2.trials_per_arch} trials each)")
        run = self._run("stage2", "stage2 (optuna)", pipeline_run)
        by_name = {a["name"]: a for a in self.archs}
        lr_eff = dict(zip(s1["arch"], s1["lr_eff"]))
        metric, mode = f"best_{s2.metric}", space.stage2_mode
        first = {n: stages.seed_point(space, float(lr_eff.get(n, math.nan))) for n in chosen}
        ranges = {n: stages.lr_bounds(space, float(lr_eff.get(n, math.nan))) for n in chosen}
        if s2.lr_window is not None:
            self.say("  lr ranges (within {:g} decade(s) of Alrao's rate): {}".format(
                s2.lr_window, ", ".join(f"{n} {lo:.2g}..{hi:.2g}"
                                        for n, (lo, hi) in ranges.items())))
        studies = {n: optuna_storage.study_name(space.name, pipeline_run, n) for n in chosen}
        self.studies = studies
        self.tree.set_tags(run, {STUDIES_TAG: json.dumps(studies),
                                 OPTUNA_STORAGE_TAG: self.optuna_url or "memory"})
        searcher = PerArchSearch(
            {n: stages.stage2_searcher(space, metric, mode, ranges[n], storage=self.optuna,
                                       study_name=studies[n]) for n in chosen},
            {n: stages.stage2_param_space(space, by_name[n]) for n in chosen},
            budget=s2.trials_per_arch, metric=metric, mode=mode,
            studies={n: (self.optuna, studies[n]) for n in chosen},
            first_points={n: {"lr": first[n]} for n in chosen if first[n] is not None})
        job = TuneJob(
            name="stage2", param_space={}, storage=self.state.root,
            resources=space.resources.model_dump(), metric=metric, mode=mode,
            num_samples=s2.trials_per_arch * len(chosen), search_alg=searcher)
        frame = self._stage_frame(job, run, "stage2")
        if orphans := optuna_storage.close_studies(self.optuna, list(studies.values())):
            self.say(f"  {orphans} Optuna trial(s) a kill left RUNNING ended FAIL")
        frame["seeded"] = [first.get(a) is not None and math.isclose(v, first[a], rel_tol=1e-9)
                           for a, v in zip(frame["arch"], frame["lr"])]
        self._end(run)
        return frame

    def _stage_frame(self, job: TuneJob, stage_run: str, label: str) -> pd.DataFrame:
        """The stage's trials: read back if it finished before (resume), else run."""
        if self.resume and self.state.is_done(label):
            frame = trials_frame(load_results(job), trial_runs(self.tree, stage_run))
            reconcile_runs(self.tree, stage_run, frame)
            self.timings.update(self.state.timings(label))
            self.say(f"  [{label}] finished before the interruption: {len(frame)} trials read "
                     f"from {job.path}")
            return frame
        frame = self._run_job(job, stage_run, label)
        self.state.mark_done(label, {k: _clean(v) for k, v in self.timings.items()
                                     if k.startswith(f"{label}_")})
        return frame

    def _run_job(self, job: TuneJob, stage_run: str, label: str) -> pd.DataFrame:
        from alrao_tune.tracking.callback import MLflowTrialCallback

        callback = MLflowTrialCallback(self.tree, stage_run, trial_name_fn=_trial_name)
        total = job.num_samples if job.search_alg is not None else None
        done = announce_resume(job.path, label, self.say) if self.resume else 0
        job.callbacks = [callback, _ProgressCallback(self.say, label, total, start=done)]
        t0 = time.perf_counter()
        try:
            grid = run_job(job, resume=self.resume)
        finally:
            callback.close()
        wall = time.perf_counter() - t0
        frame = (resumed_frame(self.tree, stage_run, grid, callback.run_ids, self.say)
                 if self.resume else trials_frame(grid, callback.run_ids))
        self.timings[f"{label}_wall_s"] = wall  # resumed: this invocation's part only
        self.timings[f"{label}_trial_s"] = float(frame["time_total_s"].fillna(0).sum())
        stats = callback.stats
        self.timings[f"{label}_mlflow_values"] = float(stats["values"])
        self.timings[f"{label}_mlflow_hook_s"] = float(stats["hook_s"])  # blocking Tune's loop
        self.timings[f"{label}_mlflow_write_s"] = float(stats["write_s"])  # background thread
        self.tree.log_text(stage_run, frame.to_csv(index=False),
                           f"trials-{stages.safe_name(label)}.csv")
        return frame


def _trial_name(trial: Any) -> str:
    from alrao_tune.tune.trainable import trial_config

    config = trial_config(trial.config)
    if config.get("stage") == "stage1":
        return f"{config['arch_name']} seed={config['train']['seed']}"
    lr = config.get("lr")
    return f"{config.get('arch_name', trial.trial_id)} lr={lr:.3g}" if lr else trial.trial_id


def _ProgressCallback(say: Progress, label: str, total: int | None = None,  # noqa: N802
                      name_fn: Callable[[Any], str] | None = None, start: int = 0) -> Any:
    """One line per finished trial; a bar per stage on a terminal (:mod:`.progress`)."""
    return progress_callback(say, label, total, name_fn or _trial_name, start)


def _format_stage1(s1: pd.DataFrame, k: int) -> str:
    lines = ["stage 1 ranking (proxy score = mean best validation value of the Alrao runs):"]
    for row in s1.itertuples():
        mark = "*" if row.alrao_rank <= k and row.failed_runs < row.seeds else " "
        failed = f"  ({row.failed_runs} failed/diverged)" if row.failed_runs else ""
        lines.append(f" {mark}{row.alrao_rank:>3}  {row.arch:<32} {row.alrao_score:.4f}"
                     f"  lr_eff={row.lr_eff:.2g}{failed}")
    return "\n".join(lines)


def _space_params(space: SearchSpace) -> dict[str, Any]:
    raw = space.to_dict()
    raw.pop("architectures", None)
    raw.pop("grids", None)
    raw["n_architectures"] = len(space.architectures_resolved())
    return raw


def _log_pipeline_artifacts(tree: Any, run_id: str, space: SearchSpace, r: ScreenResult) -> None:
    tree.log_text(run_id, space.to_yaml(), "space.yaml")
    tree.log_text(run_id, r.leaderboard.to_csv(index=False), "leaderboard.csv")
    tree.log_text(run_id, r.stage1.to_csv(index=False), "stage1.csv")
    if r.stage2 is not None:
        tree.log_text(run_id, r.stage2.to_csv(index=False), "stage2.csv")
    tree.log_dict(run_id, r.to_json(), "results.json")
    tree.log_metrics(run_id, {k: v for k, v in r.timings.items() if math.isfinite(v)})


def _log_figures(tree: Any, run_id: str, space: SearchSpace, r: ScreenResult,
                 folder: Path) -> None:
    """Stage-1 learning curves and each top-k architecture's switch posterior, as PNGs."""
    from alrao_tune.alrao.heads import head_learning_rates
    from alrao_tune.report import figures

    folder.mkdir(parents=True, exist_ok=True)
    client = tree.client
    trials = r.stage1_trials.dropna(subset=["run_id"])
    first_seed = trials[trials["seed"] == trials["seed"].min()]
    curves = {row.arch: [(m.step, m.value) for m in client.get_metric_history(row.run_id,
                                                                             "val_loss")]
              for row in first_seed.itertuples()}
    path = figures.learning_curves(screening.curves_frame(curves),
                                   folder / "stage1_curves.png",
                                   "stage 1: Alrao validation loss per architecture")
    tree.log_artifact(run_id, path, "figures")
    rates = head_learning_rates(space.alrao.n_heads, space.alrao.lr_min,
                                space.alrao.lr_max).tolist()
    top = screening.top_k(r.stage1, space.stage1.top_k)
    for row in first_seed[first_seed["arch"].isin(top)].itertuples():
        hist = {k: [(m.step, m.value) for m in client.get_metric_history(
            row.run_id, f"posterior/head_{k:02d}")] for k in range(len(rates))}
        path = figures.posterior_evolution(
            screening.posterior_frame(hist, rates),
            folder / f"posterior_{stages.safe_name(row.arch)}.png",
            f"switch posterior over training: {row.arch}")
        tree.log_artifact(run_id, path, "figures")


def write_outputs(result: ScreenResult, output: Path) -> None:
    """Writes ``leaderboard.csv``, ``stage1.csv``, ``stage2.csv``, ``results.json``."""
    output.mkdir(parents=True, exist_ok=True)
    result.leaderboard.to_csv(output / "leaderboard.csv", index=False)
    result.stage1.to_csv(output / "stage1.csv", index=False)
    if result.stage2 is not None:
        result.stage2.to_csv(output / "stage2.csv", index=False)
    (output / "results.json").write_text(json.dumps(result.to_json(), indent=2))


@contextlib.contextmanager
def _figures_folder(root: Location) -> Iterator[Path]:
    """``<root>/figures`` for local storage; a temporary folder for a URI (the PNGs are
    MLflow artifacts of the pipeline run either way)."""
    if root.local is not None:
        yield root.local / "figures"
        return
    with tempfile.TemporaryDirectory(prefix="alrao-figures-") as tmp:
        yield Path(tmp)


def _faults(archs: list[dict[str, Any]]) -> dict[str, str]:
    """TEST-ONLY fault injection from the environment (see ``trainable.faults_from_env``),
    checked against the architectures before anything is written."""
    from alrao_tune.train.config import ConfigError
    from alrao_tune.tune.trainable import faults_from_env

    try:
        faults = faults_from_env()
        inject_faults([{"arch_name": a["name"]} for a in archs], faults)
    except ValueError as err:
        raise ConfigError(f"fault injection: {err}") from err
    return faults
