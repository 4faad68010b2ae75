"""`alrao-tune compare`: does one Alrao run per architecture rank architectures like a grid?

For every architecture and seed of the search space, one Ray Tune experiment runs:
SGD at every learning rate of ``compare.lr_grid`` (the ground truth, per momentum in
``compare.momentum``), Adam at its defaults, Alrao with the space's settings, Alrao with
its interval chosen by an LR range test (``alrao_auto``), and the practitioner's shortcut
(an LR range test, then one SGD run with the 1cycle policy). Every run uses the same
epoch budget, early stopping and minimum epochs. The report measures each cheap proxy
against the truth (:mod:`alrao_tune.report.ranking`, :mod:`alrao_tune.report.fidelity`,
:mod:`alrao_tune.report.compare`).

A comparison runs for hours; ``resume=True`` (``alrao-tune compare SPACE --resume``)
finishes the newest unfinished one of the space under ``storage`` through
``Tuner.restore``: trials that ended are kept, the others continue from their last
checkpoint, the interrupted compare run in MLflow (named in ``compare.json`` in the
comparison's folder) is reopened, and trial runs the kill left RUNNING are closed or, for a
trial Tune never saved, deleted (as for ``screen --resume``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alrao_tune.report import compare as report_compare
from alrao_tune.report import fidelity
from alrao_tune.schema import KIND_TAG
from alrao_tune.space import SearchSpace, load_space
from alrao_tune.tune import stages
from alrao_tune.tune.preflight import preflight
from alrao_tune.tune.resume import (
    ResumeError,
    announce_resume,
    check_same_settings,
    resumed_frame,
    settings_fingerprint,
)
from alrao_tune.tune.runner import TuneJob, run_job, trials_frame
from alrao_tune.tune.screen import Progress, _clean, _ProgressCallback
from alrao_tune.tune.storage import Location

STATE_FILE = "compare.json"  # in the comparison's folder: its MLflow run and status


def _trial(space: SearchSpace, arch: dict[str, Any], seed: int, proxy: str, method: str,
           *, lr_find: str | None = None, **train: Any) -> dict[str, Any]:
    cfg = stages.train_config(space, arch, method=method, seed=seed)
    cfg.update(min_epochs=_min_epochs(space), **train)
    out = {"stage": "compare", "proxy": proxy, "arch_name": arch["name"], "train": cfg}
    return {**out, "lr_find": lr_find} if lr_find else out


def compare_trials(space: SearchSpace, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every trial config of the comparison (one grid axis)."""
    c = space.compare
    trials = []
    for arch in space.architectures_resolved():
        for seed in seeds:
            def trial(proxy: str, method: str, _a=arch, _s=seed, **kw: Any) -> dict[str, Any]:
                return _trial(space, _a, _s, proxy, method, **kw)

            for m in c.momentum:
                trials += [trial("sgd", "sgd", lr=lr, momentum=m) for lr in c.lr_values()]
            if not any(math.isclose(c.default_lr, lr) for lr in c.lr_values()):
                trials.append(trial("sgd_default", "sgd", lr=c.default_lr,
                                    momentum=c.momentum[0]))
            if c.adam:
                trials.append(trial("adam", "adam", lr=1e-3))
            trials.append(trial("alrao", "alrao"))
            trials += [trial(f"alrao_momentum{m:g}", "alrao", momentum=m)
                       for m in c.alrao_momentum]
            trials += [trial(f"alrao_range{lo:g}-{hi:g}", "alrao", lr_min=lo, lr_max=hi)
                       for lo, hi in c.alrao_ranges]
            if c.alrao_auto_range:
                trials.append(trial("alrao_auto", "alrao", lr_find="alrao_range"))
            if c.lr_find:
                trials.append(trial("lrfind_1cycle", "sgd", lr_find="1cycle"))
    return trials


@dataclass
class CompareResult:
    """Tables of one comparison (one set per SGD momentum in ``compare.momentum``)."""

    space: str
    trials: pd.DataFrame
    reports: dict[float, dict[str, Any]] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    # per-epoch validation loss of the grid's and Alrao's runs of the first seed (Figure 2)
    curves: pd.DataFrame = field(default_factory=lambda: report_compare.curves_data([]))

    def to_json(self) -> dict[str, Any]:
        def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: _clean(v) for k, v in r.items()} for r in frame.to_dict("records")]

        out: dict[str, Any] = {"space": self.space, "run_ids": self.run_ids,
                               "wall_s": self.wall_s, "by_momentum": {}}
        for m, rep in self.reports.items():
            out["by_momentum"][str(m)] = {
                k: rows(v) if isinstance(v, pd.DataFrame) else {
                    kk: _clean(vv) for kk, vv in v.items()} for k, v in rep.items()}
        return out


def build_reports(trials: pd.DataFrame, space: SearchSpace) -> dict[float, dict[str, Any]]:
    """All report tables, per SGD momentum of the truth."""
    reports: dict[float, dict[str, Any]] = {}
    for m in space.compare.momentum:
        truth = report_compare.truth_tables(trials, m)
        proxies = report_compare.proxy_tables(trials, default_lr=space.compare.default_lr,
                                              momentum=m)
        k = min(3, len(truth["val_loss"]))
        reports[m] = {
            "table1": report_compare.table1(trials, m),
            "fidelity": fidelity.fidelity(proxies, truth["val_loss"], truth["test_acc"], k=k,
                                         mode="min", metric_mode="max"),
            "noise_ceiling": fidelity.noise_ceiling(truth["val_loss"]),
            "costs": report_compare.compute_costs(trials, m),
            "pipeline": report_compare.pipeline_vs_grid(trials, m, space.stage1.top_k),
            "pipelines": report_compare.pipelines(trials, m),
            "lr_agreement": report_compare.lr_agreement(trials, m),
        }
    return reports


def compare(
    space: SearchSpace | str | Path,
    *,
    overrides: Sequence[str] = (),
    seeds: int | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    address: str | None = None,
    output: str | Path | None = None,
    progress: Progress | None = print,
    resume: bool = False,
) -> CompareResult:
    """Runs (or, with ``resume``, finishes) the comparison and writes its report (see the
    module docstring)."""
    import time

    from alrao_tune import tracking
    from alrao_tune.tune.session import ray_session

    say = progress or (lambda _m: None)
    if not isinstance(space, SearchSpace):
        space = load_space(space, overrides)
    seed_list = list(range(seeds)) if seeds is not None else list(space.compare.seeds)
    archs = space.architectures_resolved()
    preflight(space, archs)
    configs = compare_trials(space, seed_list)
    base = Location.parse(storage) / stages.safe_name(space.name)
    root, state = (_resumable(base, say) if resume
                   else (base / f"compare-{time.strftime('%Y%m%d-%H%M%S')}", {}))
    settings = settings_fingerprint(configs)
    if resume:
        check_same_settings(state.get("settings"), settings, root)
    state["settings"] = settings
    uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_reachable(uri)
    with ray_session(address, resources=space.resources.model_dump()):
        return _compare(space, seed_list, configs, len(archs), root, state, uri, output,
                        say, resume)


def _compare(space: SearchSpace, seed_list: list[int], configs: list[dict[str, Any]],
             n_archs: int, root: Location, state: dict[str, Any], uri: str,
             output: str | Path | None, say: Progress, resume: bool) -> CompareResult:
    """The comparison, inside the Ray session (see :func:`compare`)."""
    import time

    from alrao_tune import tracking

    tree = tracking.RunTree(uri, tracking.prepare_store(uri, space.name))
    say(f"compare: {n_archs} architectures x {len(seed_list)} seed(s): {len(configs)} runs")
    parent = state.get("run_id")
    if parent is not None:
        tree.reopen(parent)
    else:
        parent = tree.start(f"compare {space.name}", params={
            "seeds": seed_list, "n_runs": len(configs), "n_architectures": n_archs},
            tags={KIND_TAG: "compare"})
    _write_state(root, {"run_id": parent, "status": "RUNNING", "settings": state["settings"]})
    status, t0 = "FAILED", time.perf_counter()
    try:
        from ray import tune

        from alrao_tune.tracking.callback import MLflowTrialCallback

        done = announce_resume(root / "compare", "compare", say, "runs") if resume else 0
        callback = MLflowTrialCallback(tree, parent, trial_name_fn=_name)
        job = TuneJob(name="compare", param_space={"trial": tune.grid_search(configs)},
                      storage=root, resources=space.resources.model_dump(),
                      metric="best_val_loss", mode="min",
                      callbacks=[callback, _ProgressCallback(say, "compare", len(configs),
                                                             _name, start=done)])
        try:
            grid = run_job(job, resume=resume)
        finally:
            callback.close()
        trials = (resumed_frame(tree, parent, grid, callback.run_ids, say) if resume
                  else trials_frame(grid, callback.run_ids))
        trials, curves = _curves(tree, trials, _min_epochs(space))
        result = CompareResult(space.name, trials, build_reports(trials, space),
                               {"compare": parent}, time.perf_counter() - t0, curves)
        _log(tree, parent, result)
        if output is not None:
            write_outputs(result, Path(output), tree)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"  # resumable: `--resume` finishes it
        raise
    finally:
        tree.end(parent, status)
        _write_state(root, {"run_id": parent, "status": status,
                            "settings": state["settings"]})


def _min_epochs(space: SearchSpace) -> int:
    """The compare's minimum epochs before early stopping (default: training's)."""
    c = space.compare
    return c.min_epochs if c.min_epochs is not None else space.training.min_epochs


def _curves(tree: Any, trials: pd.DataFrame, area_epochs: int
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Learning curves read back from MLflow: ``trials`` with a ``train_area`` column (the
    training-curve area of each Alrao run over its first ``area_epochs`` epochs, see
    :func:`report_compare.curve_area`), and the per-epoch validation loss of the first
    seed's grid and Alrao runs (``report_compare.curves_data``)."""
    def history(run_id: Any, key: str) -> list[tuple[int, float]]:
        if not isinstance(run_id, str) or not run_id:
            return []
        return sorted((m.step, m.value) for m in tree.client.get_metric_history(run_id, key))

    area = pd.Series(math.nan, index=trials.index)
    for i, row in trials[trials["method"] == "alrao"].iterrows():
        values = [v for _, v in history(row["run_id"], "train_loss")]
        if values:
            area[i] = report_compare.curve_area(values, area_epochs or None)
    records = []
    if len(trials):
        first = trials[(trials["seed"] == trials["seed"].min())
                       & trials["proxy"].isin(["sgd", "alrao"])]
        for row in first.itertuples():
            label = "alrao" if row.proxy == "alrao" else f"sgd_m{row.momentum:g}"
            records += [{"arch": row.arch, "proxy": label, "lr": row.lr, "epoch": step,
                         "val_loss": v} for step, v in history(row.run_id, "val_loss")]
    return trials.assign(train_area=area), report_compare.curves_data(records)


def _resumable(base: Location, say: Progress) -> tuple[Location, dict[str, Any]]:
    """The newest comparison under ``base`` that did not finish, and its state; reads only.

    Raises:
        ResumeError: none there (or only finished ones).
        CheckpointError: a checkpoint that a trial would continue from is unreadable.
    """
    from ray import tune

    from alrao_tune.tune.runner import check_resumable

    folders = sorted((n for n in base.children() if n.startswith("compare-")), reverse=True)
    for root in (base / name for name in folders):
        if not tune.Tuner.can_restore(str(root / "compare")):
            continue
        try:
            state = json.loads((root / STATE_FILE).read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("status") == "FINISHED":
            break
        check_resumable(root / "compare", say)
        return root, state
    raise ResumeError(f"nothing to resume under {base}: no unfinished comparison of this "
                      "space there; run it without --resume.")


def _write_state(root: Location, data: dict[str, Any]) -> None:
    root.mkdir()
    (root / STATE_FILE).write_text(json.dumps(data, indent=2))


def _name(trial: Any) -> str:
    from alrao_tune.tune.trainable import trial_config

    c = trial_config(trial.config)
    lr = c["train"].get("lr")
    suffix = f" lr={lr:.3g}" if c["proxy"] in ("sgd", "sgd_default") else ""
    return f"{c['arch_name']} {c['proxy']}{suffix} seed={c['train']['seed']}"


def _log(tree: Any, run_id: str, result: CompareResult) -> None:
    tree.log_text(run_id, result.trials.to_csv(index=False), "trials.csv")
    tree.log_text(run_id, result.curves.to_csv(index=False), "curves.csv")
    tree.log_dict(run_id, result.to_json(), "compare.json")
    for m, rep in result.reports.items():
        tree.log_text(run_id, markdown(rep), f"report-momentum{m}.md")
        fid = rep["fidelity"]
        metrics = {}
        for row in fid.itertuples():
            metrics[f"tau_avg/{row.proxy}"] = row.tau_avg
            metrics[f"topk_recall/{row.proxy}"] = row.topk_recall
            metrics[f"regret/{row.proxy}"] = row.regret
        tree.log_metrics(run_id, {k: float(v) for k, v in metrics.items()
                                  if isinstance(v, (int, float)) and math.isfinite(v)})


def markdown(rep: dict[str, Any]) -> str:
    """The report of one momentum as markdown tables."""
    parts = ["### Table 1 (per architecture; mean ± std over seeds)\n",
             rep["table1"].to_markdown(index=False, floatfmt=".3g"),
             "\n\n### Ranking fidelity against the grid's best SGD\n",
             rep["fidelity"].to_markdown(index=False, floatfmt=".3f"),
             f"\n\nNoise ceiling (truth's own seed-to-seed Kendall τ): {rep['noise_ceiling']}\n",
             "\n### Compute\n", rep["costs"].to_markdown(index=False, floatfmt=".3g"),
             f"\n\nTwo-stage pipeline vs grid: {rep['pipeline']}\n\n",
             rep["pipelines"].to_markdown(index=False, floatfmt=".3g"), "\n",
             "\n### Alrao effective learning rate vs the grid's best\n",
             rep["lr_agreement"].to_markdown(index=False, floatfmt=".3g"), "\n"]
    return "".join(parts)


def write_outputs(result: CompareResult, output: Path, tree: Any | None = None) -> None:
    """``trials.csv``, ``compare.json``, one markdown report and figures per momentum."""
    from alrao_tune.report import figures

    output.mkdir(parents=True, exist_ok=True)
    result.trials.to_csv(output / "trials.csv", index=False)
    result.curves.to_csv(output / "curves.csv", index=False)
    (output / "compare.json").write_text(json.dumps(result.to_json(), indent=2))
    for m, rep in result.reports.items():
        (output / f"report-momentum{m}.md").write_text(markdown(rep))
        rep["table1"].to_csv(output / f"table1-momentum{m}.csv", index=False)
        rep["fidelity"].to_csv(output / f"fidelity-momentum{m}.csv", index=False)
        truth = report_compare.truth_tables(result.trials, m)["val_loss"]
        alrao = report_compare.proxy_tables(result.trials, default_lr=math.nan,
                                            momentum=m).get("alrao")
        if alrao is not None:
            figures.scatter(report_compare.scatter_data(alrao, truth),
                            output / f"scatter-momentum{m}.png", rep["fidelity"])
        figures.compute(report_compare.compute_costs(result.trials, m),
                        output / f"compute-momentum{m}.png")
        curves = result.curves[result.curves["proxy"].isin(["alrao", f"sgd_m{m:g}"])]
        if len(curves):
            figures.lr_curves(curves, output / f"curves-momentum{m}.png")
        if tree is not None:
            tree.log_artifact(result.run_ids["compare"], output / f"report-momentum{m}.md")
            for name in (f"scatter-momentum{m}.png", f"curves-momentum{m}.png",
                         f"compute-momentum{m}.png"):
                if (output / name).exists():
                    tree.log_artifact(result.run_ids["compare"], output / name, "figures")
