"""The screening pipeline: validate -> stage 1 (Alrao) -> top-k -> stage 2 (Optuna) -> leaderboard.

Everything is tracked in MLflow as ``pipeline run -> stage run -> one run per trial``,
logged from the driver; trials, checkpoints and Tune state live under ``storage`` (a
local or shared folder, or a URI such as ``s3://bucket/prefix``: see
:mod:`alrao_tune.tune.storage`).

The start-up, the MLflow parent run, resume and Ctrl-C are the pipeline driver's
(:mod:`alrao_tune.tune.driver`), shared with ``compare``. Resume (``resume=True``,
``alrao-tune screen SPACE --resume``) continues the newest screening of the space under
``storage`` (``<storage>/<space>/LATEST`` names its folder, whose ``pipeline.json`` holds
its MLflow run ids and which stages finished):

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alrao_tune.report import screening
from alrao_tune.schema import OPTUNA_STORAGE_TAG, STUDIES_TAG
from alrao_tune.space import SearchSpace, load_space
from alrao_tune.tune import optuna_storage, stages
from alrao_tune.tune.driver import Pipeline, Progress, Trainable, json_value, run_pipeline
from alrao_tune.tune.preflight import preflight
from alrao_tune.tune.runner import TuneJob
from alrao_tune.tune.storage import Location
from alrao_tune.tune.trainable import trial_config

STAGES = ("stage1", "stage2")


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
            return [{k: json_value(v) for k, v in r.items()}
                    for r in frame.to_dict("records")]

        return {
            "space": self.space, "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id, "run_ids": self.run_ids,
            "timings": {k: json_value(v) for k, v in self.timings.items()},
            "storage": self.storage, "model_uri": self.model_uri,
            "optuna_storage": self.optuna_storage, "optuna_studies": self.optuna_studies,
            "leaderboard": rows(self.leaderboard),
            "stage1": rows(self.stage1), "stage2": rows(self.stage2),
            "stage1_trials": rows(self.stage1_trials), "stage2_trials": rows(self.stage2_trials),
        }


def screen(
    space: SearchSpace | str | Path,
    *,
    overrides: Sequence[str] = (),
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    address: str | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    trainable: Trainable | None = None,
    register_model: str | None = None,
) -> ScreenResult:
    """Runs the two-stage screening of a search space; see the module docstring.

    Args:
        space: a :class:`SearchSpace`, a YAML file, or the name of a shipped space.
        overrides: ``--set`` style ``key=value`` overrides of the YAML.
        tracking_uri: MLflow store (default ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        storage: Tune storage, a folder or a URI (default ``./alrao_runs``).
        address: a Ray cluster's address (default ``RAY_ADDRESS``, else a local Ray).
        output: a folder for ``leaderboard.csv``, ``stage1.csv``, ``stage2.csv`` and
            ``results.json``.
        resume: continue the newest interrupted screening of the space.
        progress: where progress lines go (default: the driver's logger, at INFO).
        trainable: the Tune trainable of every trial (default
            :func:`~alrao_tune.tune.trainable.train_trial`; tests pass a faulty one).
        register_model: register the winner's model under this name in MLflow's model
            registry. The winner (the best trial of the leaderboard's first architecture,
            weights of its best validation epoch) is logged as an MLflow model under the
            pipeline run in any case (``ScreenResult.model_uri``;
            :func:`alrao_tune.load_best` loads it back).

    Stage 2's Optuna studies go to ``stage2.storage`` (default: ``optuna.db`` beside the
    MLflow SQLite store; :mod:`alrao_tune.tune.optuna_storage`).

    Raises:
        SpaceError, ConfigError, DatasetError, ArchError, ResumeError, CheckpointError,
            TrackingError, ClusterError: bad input, raised before anything is written to
            MLflow or storage.
    """
    if not isinstance(space, SearchSpace):
        space = load_space(space, overrides)
    archs = space.architectures_resolved()
    preflight(space, archs)
    body = _Screening(space, archs, register_model)
    if space.stage2.enabled:
        from alrao_tune.tracking import default_tracking_uri

        body.optuna_url = optuna_storage.storage_url(
            space.stage2.storage, tracking_uri or default_tracking_uri(), Location.parse(storage))
        optuna_storage.check_url(body.optuna_url)  # opened when stage 2 starts
    result = run_pipeline(
        "pipeline", space, space.model_dump(mode="json"), body.run,
        name=f"screen {space.name}", params=_space_params(space), stage_labels=STAGES,
        tracking_uri=tracking_uri, storage=storage, address=address, resume=resume,
        progress=progress, trainable=trainable)
    if output is not None:
        write_outputs(result, Path(output))
    return result


class _Screening:
    """The screening's own work inside the pipeline driver: its two stages, its tables."""

    def __init__(self, space: SearchSpace, archs: list[dict[str, Any]],
                 register_model: str | None = None, *, log_winner: bool = True) -> None:
        self.space, self.archs, self.register_model = space, archs, register_model
        self.log_winner = log_winner  # compare's two-stage strategy needs no model
        self.optuna: Any = None  # the Optuna storage of stage 2's studies
        self.optuna_url: str | None = None
        self.studies: dict[str, str] = {}

    def run(self, p: Pipeline, pipeline_run: str) -> ScreenResult:
        space = self.space
        t1 = self._stage1(p, pipeline_run)
        s1 = screening.proxy_scores(t1, space.stage1.metric, space.stage1_mode)
        p.say(_format_stage1(s1, space.stage1.top_k))
        t2 = s2 = None
        if space.stage2.enabled:
            t2 = self._stage2(p, pipeline_run, s1)
            s2 = screening.best_trials(t2, space.stage2.metric, space.stage2_mode)
        mode = space.stage2_mode if s2 is not None else space.stage1_mode
        board = screening.leaderboard(s1, s2, mode)
        result = ScreenResult(space.name, t1, s1, t2, s2, board, p.tree.uri,
                              p.tree.experiment_id, dict(p.run_ids), dict(p.timings),
                              str(p.root))
        if self.log_winner:
            result.model_uri = self._log_winner(p, pipeline_run, board, t1, t2)
        result.optuna_storage, result.optuna_studies = self.optuna_url, self.studies
        _log_pipeline_artifacts(p.tree, pipeline_run, space, result)
        with _figures_folder(p.root) as folder:
            _log_figures(p.tree, pipeline_run, space, result, folder)
        return result

    def _stage1(self, p: Pipeline, pipeline_run: str) -> pd.DataFrame:
        space = self.space
        n = len(self.archs) * len(space.stage1.seeds)
        proxy = space.stage1.proxy
        p.say(f"stage 1: {len(self.archs)} architectures x {len(space.stage1.seeds)} seed(s)"
              f" = {n} {proxy} trials")
        run = p.open_run("stage1", f"stage1 ({proxy})", pipeline_run)
        job = TuneJob(
            name="stage1", param_space=stages.stage1_param_space(space),
            storage=p.root, resources=space.resources.model_dump(),
            metric=f"best_{space.stage1.metric}", mode=space.stage1_mode,
            scheduler=stages.stage1_scheduler(space))
        frame = p.stage(job, run, "stage1", name_fn=_trial_name)
        p.end_run(run)
        return frame

    def _stage2(self, p: Pipeline, pipeline_run: str, s1: pd.DataFrame) -> pd.DataFrame:
        space, s2 = self.space, self.space.stage2
        chosen = screening.top_k(s1, space.stage1.top_k)
        p.say(f"stage 2: Optuna search over the learning rate for the top {len(chosen)}: "
              f"{', '.join(chosen)} ({s2.trials_per_arch} trials each)")
        run = p.open_run("stage2", "stage2 (optuna)", pipeline_run)
        by_name = {a["name"]: a for a in self.archs}
        lr_eff = dict(zip(s1["arch"], s1["lr_eff"]))
        metric, mode = f"best_{s2.metric}", space.stage2_mode
        first = {n: stages.seed_point(space, float(lr_eff.get(n, math.nan))) for n in chosen}
        ranges = {n: stages.lr_bounds(space, float(lr_eff.get(n, math.nan))) for n in chosen}
        if s2.lr_window is not None:
            p.say("  lr ranges (within {:g} decade(s) of Alrao's rate): {}".format(
                s2.lr_window, ", ".join(f"{n} {lo:.2g}..{hi:.2g}"
                                        for n, (lo, hi) in ranges.items())))
        if self.optuna is None:  # after the driver's checks; None: the studies in memory
            self.optuna = optuna_storage.open_storage(self.optuna_url)
        studies = {n: optuna_storage.study_name(space.name, pipeline_run, n) for n in chosen}
        self.studies = studies
        p.tree.set_tags(run, {STUDIES_TAG: json.dumps(studies),
                              OPTUNA_STORAGE_TAG: self.optuna_url or "memory"})
        searcher = stages.per_arch_search(
            space, lr_eff, {n: stages.stage2_param_space(space, by_name[n]) for n in chosen},
            metric=metric, mode=mode, storage=self.optuna, studies=studies,
            budget=s2.trials_per_arch)
        job = TuneJob(
            name="stage2", param_space={}, storage=p.root,
            resources=space.resources.model_dump(), metric=metric, mode=mode,
            num_samples=s2.trials_per_arch * len(chosen), search_alg=searcher,
            scheduler=stages.stage2_scheduler(space, metric, mode))
        frame = p.stage(job, run, "stage2", name_fn=_trial_name, total=job.num_samples)
        if orphans := optuna_storage.close_studies(self.optuna, list(studies.values())):
            p.say(f"  {orphans} Optuna trial(s) a kill left RUNNING ended FAIL")
        frame["seeded"] = [first.get(a) is not None and math.isclose(v, first[a], rel_tol=1e-9)
                           for a, v in zip(frame["arch"], frame["lr"])]
        p.end_run(run)
        return frame


    def _log_winner(self, p: Pipeline, run_id: str, board: pd.DataFrame, t1: pd.DataFrame,
                    t2: pd.DataFrame | None) -> str | None:
        from alrao_tune.tune.winner import log_winner

        space = self.space
        label, trials, metric, mode = (
            ("stage2", t2, space.stage2.metric, space.stage2_mode) if t2 is not None
            else ("stage1", t1, space.stage1.metric, space.stage1_mode))
        trial = screening.winner_trial(board, trials, metric, mode)
        if trial is None:
            p.say("no winner to log: the first architecture has no usable trial")
            return None
        return log_winner(p.tree, run_id, p.root / label, trial, self.register_model, p.say)


def _trial_name(trial: Any) -> str:

    config = trial_config(trial.config)
    if config.get("stage") == "stage1":
        return f"{config['arch_name']} seed={config['train']['seed']}"
    lr = config.get("lr")
    return f"{config.get('arch_name', trial.trial_id)} lr={lr:.3g}" if lr else trial.trial_id


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
    if space.stage1.proxy != "alrao":
        return  # no switch posterior to draw
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
