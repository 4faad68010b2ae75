"""Tables for the dashboard, read from the MLflow store that ``screen`` and ``compare`` write.

Two layers. *Readers* take an ``MlflowClient`` and use batched queries: ``search_runs``
with a filter string over an experiment (paged, 1,000 runs a page), one artifact
(``results.json``, falling back to the runs when it is missing), and
``get_metric_history`` only for the one trial on screen. *Views* are pure functions of
what was read and return the pandas tables every chart of ``dashboards/app.py`` draws
(tested by equality). Problems with the store raise a :class:`StoreError` whose message
says what is wrong and what to do; the dashboard shows it instead of a traceback.
The compare run's views are in :mod:`alrao_tune.report.store_compare`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alrao_tune import schema, tracking
from alrao_tune.errors import AlraoTuneError
from alrao_tune.report import screening
from alrao_tune.schema import KIND_TAG, PARENT_TAG, TRIAL_COLUMNS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

PAGE_SIZE = 1000
CURVE_METRICS = ("train_loss", "val_loss", "val_acc", "lr_eff")
FUNNEL_COLUMNS = ("rank", "arch", "status", "n_params", "alrao_score", "alrao_rank", "lr_eff",
                  "stage2", "best_lr", "val_loss", "val_acc", "test_loss", "test_acc",
                  "stage2_rank", "trial_seconds")


class StoreError(AlraoTuneError, RuntimeError):
    """The store cannot be shown; the message says why and what to do."""


class StoreUnreachableError(StoreError):
    """The tracking URI does not answer or is not an MLflow store."""


class EmptyStoreError(StoreError):
    """The store holds no screening or compare run."""


class NoResultsError(StoreError):
    """A run has nothing to show (every trial failed, or its report is missing)."""


# ------------------------------------------------------------------------------ readers
def connect(uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` after checking that the store exists and answers.

    Raises:
        EmptyStoreError: a ``sqlite:///`` file that does not exist (it is not created).
        StoreUnreachableError: an http(s) server that does not answer, or a broken store.
    """
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise EmptyStoreError(f"no MLflow store at {db}: run `alrao-tune screen SPACE.yaml "
                              f"--tracking-uri {uri}` first, or pick another tracking URI.")
    try:
        tracking.check_reachable(uri)
        client = tracking.mlflow_client(uri)
        client.search_experiments(max_results=1)
    except tracking.TrackingError as err:
        raise StoreUnreachableError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - any store failure is shown as one message
        raise StoreUnreachableError(f"cannot read the MLflow store at {uri}: {err}") from err
    return client


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "",
               order_by: list[str] | None = None) -> list[Run]:
    """Every run matching ``filter_string``, fetched ``PAGE_SIZE`` runs per query."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=PAGE_SIZE,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def list_experiments(client: MlflowClient) -> pd.DataFrame:
    """Experiments holding a ``screen`` or ``compare`` run (one query for all of them).

    Returns:
        Columns ``experiment_id, name, pipelines, compares``, sorted by name.

    Raises:
        EmptyStoreError: no experiment holds such a run.
    """
    names, token = {}, None
    while True:
        page = client.search_experiments(max_results=PAGE_SIZE, page_token=token)
        names.update({e.experiment_id: e.name for e in page})
        if not (token := page.token):
            break
    tops = search_all(client, list(names), f"tags.`{PARENT_TAG}` IS NULL")
    rows: dict[str, dict[str, Any]] = {}
    for run in tops:
        kind = run.data.tags.get(KIND_TAG)
        if kind in ("pipeline", "compare"):
            exp = run.info.experiment_id
            row = rows.setdefault(exp, {"experiment_id": exp, "name": names.get(exp, exp),
                                        "pipelines": 0, "compares": 0})
            row["pipelines" if kind == "pipeline" else "compares"] += 1
    if not rows:
        raise EmptyStoreError("this MLflow store holds no screening yet: run `alrao-tune "
                              "screen SPACE.yaml` (or `alrao-tune compare SPACE.yaml`) with "
                              "this tracking URI, then reload.")
    columns = ["experiment_id", "name", "pipelines", "compares"]
    return pd.DataFrame(list(rows.values()), columns=columns).sort_values("name",
                                                                          ignore_index=True)


def list_runs(client: MlflowClient, experiment_id: str, kind: str = "pipeline") -> pd.DataFrame:
    """The ``pipeline`` (or ``compare``) runs of an experiment, newest first.

    Returns:
        Columns ``run_id, name, status, started, label``.
    """
    runs = search_all(client, [experiment_id], f"tags.`{KIND_TAG}` = '{kind}'",
                      ["attributes.start_time DESC"])
    rows = []
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000))
        rows.append({"run_id": run.info.run_id, "name": run.info.run_name,
                     "status": run.info.status, "started": started,
                     "label": f"{started}  {run.info.run_name}  ({run.info.status})"})
    return pd.DataFrame(rows, columns=["run_id", "name", "status", "started", "label"])


def run_url(ui: str | None, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI at ``ui``, or None when no UI address is set."""
    if not ui:
        return None
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, or None when it does not exist."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # noqa: BLE001 - missing artifact (MlflowException / OSError)
            return None
        return Path(local).read_text()


# -------------------------------------------------------------------------- pipelines
@dataclass
class PipelineData:
    """One screening as tables (the columns of ``ScreenResult``); ``source`` says whether
    they came from the ``results.json`` artifact or were rebuilt from the trial runs."""

    run_id: str
    experiment_id: str
    status: str
    source: str
    stage1_trials: pd.DataFrame
    stage2_trials: pd.DataFrame
    stage1: pd.DataFrame
    stage2: pd.DataFrame | None
    leaderboard: pd.DataFrame


def frame_from_rows(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    """A table from JSON rows; a column that is all null becomes float NaN."""
    frame = pd.DataFrame(rows, columns=columns)
    for col in frame.columns:
        if frame[col].isna().all():
            frame[col] = np.nan
    return frame


def load_pipeline(client: MlflowClient, run_id: str, *,
                  prefer_artifact: bool = True) -> PipelineData:
    """A screening's tables: from its ``results.json`` when present, else from its runs.

    Raises:
        NoResultsError: no trial of the screening finished (all failed, or none ran).
    """
    run = client.get_run(run_id)
    text = artifact_text(client, run_id, "results.json") if prefer_artifact else None
    if text is None:
        data = _pipeline_from_runs(client, run)
    else:
        res = json.loads(text)
        stage2 = frame_from_rows(res["stage2"]) if res.get("stage2") else None
        data = PipelineData(run_id, run.info.experiment_id, run.info.status, "results.json",
                            frame_from_rows(res["stage1_trials"], list(TRIAL_COLUMNS)),
                            frame_from_rows(res["stage2_trials"], [*TRIAL_COLUMNS, "seeded"]),
                            frame_from_rows(res["stage1"]), stage2,
                            frame_from_rows(res["leaderboard"]))
    t1 = data.stage1_trials
    if not (~t1["status"].isin(schema.BAD_STATUSES)).any():
        errors = sorted({str(e) for e in t1["error"] if isinstance(e, str) and e})
        raise NoResultsError(f"no stage-1 trial of pipeline run {run_id} ({run.info.status}) "
                             f"finished: {'; '.join(errors) or 'none ran'}. Fix the cause "
                             "(see the trial runs' alrao_tune.error tag) and run it again.")
    return data


def _pipeline_from_runs(client: MlflowClient, run: Run) -> PipelineData:
    exp, params = run.info.experiment_id, run.data.params
    stages = search_all(client, [exp], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'")
    by_kind = {s.data.tags.get(KIND_TAG): s.info.run_id for s in stages}
    trials = {kind: _trials_from_runs(search_all(
        client, [exp], f"tags.`{PARENT_TAG}` = '{by_kind[kind]}'"))
        for kind in ("stage1", "stage2") if kind in by_kind}
    t1 = trials.get("stage1", _trials_from_runs([]))
    t2 = trials.get("stage2", _trials_from_runs([]))
    if not (~t1["status"].isin(schema.BAD_STATUSES)).any():  # load_pipeline says why
        return PipelineData(run.info.run_id, exp, run.info.status, "runs", t1, t2,
                            pd.DataFrame(), None, pd.DataFrame())
    metric1 = params.get("stage1.metric", "val_loss")
    metric2 = params.get("stage2.metric", "val_loss")
    mode1, mode2 = (("min" if m.endswith("loss") else "max") for m in (metric1, metric2))
    s1 = screening.proxy_scores(t1, metric1, mode1)
    s2 = screening.best_trials(t2, metric2, mode2) if len(t2) else None
    board = screening.leaderboard(s1, s2, mode2 if s2 is not None else mode1)
    return PipelineData(run.info.run_id, exp, run.info.status, "runs", t1, t2, s1, s2, board)


def _parse(text: str | None) -> Any:
    """A param's value: int, float, NaN for ``None``/missing, else the string."""
    if text is None or text == "None":
        return math.nan
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _trials_from_runs(runs: list[Run]) -> pd.DataFrame:
    """The trials table (``schema.TRIAL_COLUMNS``) rebuilt from trial runs."""
    rows = []
    for run in runs:
        params = {k.removeprefix("trial."): v for k, v in run.data.params.items()}
        metrics, tags = run.data.metrics, run.data.tags
        if run.info.status == "FAILED":
            status = "error"
        elif "diverged" in (tags.get("status"), tags.get("run_status")):
            status = "diverged"
        else:
            status = tags.get("run_status") or "stopped"
        row: dict[str, Any] = {
            "trial_id": tags.get(schema.TRIAL_ID_TAG, ""), "stage": params.get("stage", ""),
            "proxy": params.get("proxy", ""), "arch": params.get("arch_name", ""),
            "method": params.get("train.method", ""), "seed": _parse(params.get("train.seed")),
            "status": status, "epochs": metrics.get("epoch", 0),
            "error": tags.get(schema.ERROR_TAG, ""), "run_id": run.info.run_id,
            "node_id": tags.get("node_id", "")}
        for key in ("best_val_loss", "best_val_acc", "best_best_head_val_loss", "test_loss",
                    "test_acc", "lr_eff", "time_total_s", "n_params"):
            row[key] = metrics.get(key, math.nan)
        for key in ("lr", "momentum", "weight_decay"):
            row[key] = _parse(params.get(key, params.get(f"train.{key}")))
        if "run_lr" in metrics:
            row["lr"] = metrics["run_lr"]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS)).assign(seeded=False)
    return frame.sort_values(["arch", "seed", "trial_id"], kind="stable", ignore_index=True)


# ------------------------------------------------------------------------ views (pure)
def funnel(data: PipelineData) -> pd.DataFrame:
    """Every architecture: stage-1 Alrao score and rank, whether it went on to stage 2,
    its stage-2 best rate and final validation/test metrics, and what failed or diverged.

    Returns:
        Columns ``FUNNEL_COLUMNS``, in the leaderboard's order (stage-2 winners first).
    """
    board = data.leaderboard.copy()
    chosen = set(data.stage2["arch"]) if data.stage2 is not None else set()
    board["stage2"] = board["arch"].isin(chosen)
    board["status"] = [_arch_status(arch, data) for arch in board["arch"]]
    for col in ("n_params", "alrao_rank", "stage2_rank"):  # MLflow stores floats
        board[col] = pd.to_numeric(board[col]).round().astype("Int64")
    return board[list(FUNNEL_COLUMNS)]


def _arch_status(arch: str, data: PipelineData) -> str:
    parts = []
    for label, trials in (("stage 1", data.stage1_trials), ("stage 2", data.stage2_trials)):
        if not len(trials):
            continue
        mine = trials[trials["arch"] == arch]
        for status, word in (("diverged", "diverged"), ("error", "failed")):
            n = int((mine["status"] == status).sum())
            if n:
                parts.append(f"{label}: {n}/{len(mine)} {word}")
    return "; ".join(parts) or "ok"


def trial_choices(data: PipelineData) -> pd.DataFrame:
    """The trials one can open: stage 1 first (best-ranked architecture first), then stage 2.

    Returns:
        Columns ``stage, arch, seed, lr, status, best_val_loss, run_id, label``.
    """
    rank = dict(zip(data.stage1["arch"], data.stage1["alrao_rank"]))
    frames = []
    for stage, trials in (("stage1", data.stage1_trials), ("stage2", data.stage2_trials)):
        if len(trials):
            t = trials.assign(stage=stage, _rank=trials["arch"].map(rank))
            frames.append(t.sort_values(["_rank", "arch", "seed", "lr"], kind="stable"))
    out = pd.concat(frames, ignore_index=True) if frames else _trials_from_runs([])
    out = out[out["run_id"].notna()].reset_index(drop=True)
    out["label"] = [_trial_label(r) for r in out.itertuples()]
    return out[["stage", "arch", "seed", "lr", "status", "best_val_loss", "run_id", "label"]]


def _trial_label(row: Any) -> str:
    what = f"seed {row.seed}" if row.stage == "stage1" else f"lr {row.lr:.3g}"
    return f"{row.stage} · {row.arch} · {what} ({row.status})"


def lr_sensitivity(data: PipelineData, metric: str = "best_val_loss") -> tuple[pd.DataFrame,
                                                                               pd.DataFrame]:
    """Stage 2: validation metric against learning rate, per architecture.

    Returns:
        ``points`` with columns ``arch, lr, value, status, seeded`` (one per stage-2 trial;
        ``value`` NaN for a failed or diverged trial), sorted by arch and lr; and ``marks``
        with ``arch, alrao_lr_eff, best_lr``: Alrao's effective rate from stage 1 and the
        best rate found in stage 2.
    """
    t2 = data.stage2_trials
    columns = ["arch", "lr", "value", "status", "seeded"]
    if not len(t2):
        return pd.DataFrame(columns=columns), pd.DataFrame(columns=["arch", "alrao_lr_eff",
                                                                    "best_lr"])
    bad = t2["status"].isin(schema.BAD_STATUSES) | ~np.isfinite(t2[metric].astype(float))
    seeded = t2.get("seeded", False)
    points = pd.DataFrame({"arch": t2["arch"], "lr": t2["lr"].astype(float),
                           "value": t2[metric].astype(float).where(~bad),
                           "status": t2["status"], "seeded": seeded})
    points = points.sort_values(["arch", "lr"], ignore_index=True)
    eff = dict(zip(data.stage1["arch"], data.stage1["lr_eff"]))
    best = dict(zip(data.stage2["arch"], data.stage2["best_lr"])) if data.stage2 is not None \
        else {}
    archs = sorted(set(points["arch"]))
    marks = pd.DataFrame({"arch": archs, "alrao_lr_eff": [float(eff.get(a, math.nan))
                                                          for a in archs],
                          "best_lr": [float(best.get(a, math.nan)) for a in archs]})
    return points, marks


# --------------------------------------------------------------------- one trial's series
def learning_curves(client: MlflowClient, run_id: str,
                    metrics: tuple[str, ...] = CURVE_METRICS) -> pd.DataFrame:
    """Per-epoch metrics of one trial: column ``epoch`` plus one column per metric logged."""
    series = {}
    for name in metrics:
        history = client.get_metric_history(run_id, name)
        if history:
            series[name] = pd.Series({m.step: m.value for m in history}, dtype=float)
    frame = pd.DataFrame(series).sort_index()
    return frame.rename_axis("epoch").reset_index()


def head_rates(params: Mapping[str, str], metrics: Mapping[str, float]) -> list[float]:
    """The heads' learning rates ``exp(linspace(log lr_min, log lr_max, K))`` of a trial
    (:func:`alrao_tune.schema.head_rates`: the formula of ``alrao_tune.alrao.heads``).

    Args:
        params: the trial run's params (``train.lr_min``, ``train.lr_max``).
        metrics: its latest metrics: K is the number of ``posterior/head_XX`` metrics; the
            interval is the one the run used (``run_lr_min/max``, set when an LR range test
            chose it), else the params'.
    """
    params = {k.removeprefix("trial."): v for k, v in params.items()}
    k = sum(name.startswith("posterior/head_") for name in metrics)
    if k == 0:
        return []
    lo = metrics.get("run_lr_min", _parse(params.get("train.lr_min")))
    hi = metrics.get("run_lr_max", _parse(params.get("train.lr_max")))
    return schema.head_rates(k, lo, hi)


def posterior_series(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """The switch posterior of one Alrao trial per logged step and head.

    Returns:
        Long table ``step, head, lr, label, posterior`` (``label`` = "head k (lr ...)");
        empty for a run without heads (plain SGD/Adam).
    """
    run = client.get_run(run_id)
    rates = head_rates(run.data.params, run.data.metrics)
    histories = {k: [(m.step, m.value) for m in client.get_metric_history(
        run_id, f"posterior/head_{k:02d}")] for k in range(len(rates))}
    frame = screening.posterior_frame(histories, rates)
    frame.insert(3, "label", [f"head {h} (lr {r:.2g})" for h, r in zip(frame["head"],
                                                                       frame["lr"])])
    return frame.sort_values(["step", "head"], ignore_index=True)


def effective_lr(series: pd.DataFrame) -> pd.DataFrame:
    """Alrao's effective rate per step, ``exp(sum_k p_k log lr_k)`` over the posterior
    ``p`` (the ``lr_eff`` the trainer logs per epoch, before any schedule's scaling)."""
    weighted = series.assign(w=series["posterior"] * np.log(series["lr"].astype(float)))
    per_step = weighted.groupby("step", sort=True)["w"].sum()
    return pd.DataFrame({"step": per_step.index, "lr_eff": np.exp(per_step.to_numpy())})
