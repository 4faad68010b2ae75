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
checkpoint, the interrupted compare run in MLflow (named in ``pipeline.json`` in the
comparison's folder) is reopened, and trial runs the kill left RUNNING are closed or, for a
trial Tune never saved, deleted (as for ``screen --resume``). Start-up, resume and Ctrl-C are
the pipeline driver's (:mod:`alrao_tune.tune.driver`), shared with ``screen``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alrao_tune.report import compare as report_compare
from alrao_tune.report import fidelity
from alrao_tune.schema import alrao_variant_name
from alrao_tune.space import SearchSpace, load_space
from alrao_tune.tune import stages
from alrao_tune.tune.driver import Pipeline, Progress, Trainable, json_value, run_pipeline
from alrao_tune.tune.preflight import preflight
from alrao_tune.tune.runner import TuneJob
from alrao_tune.tune.trainable import trial_config


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
                trials.append(trial("adam", "adam", lr=stages.ADAM_DEFAULT_LR))
            trials += [trial(m, m) for m in c.lr_free]
            trials.append(trial("alrao", "alrao"))
            trials += [trial(f"alrao_momentum{m:g}", "alrao", momentum=m)
                       for m in c.alrao_momentum]
            trials += [trial(f"alrao_range{lo:g}-{hi:g}", "alrao", lr_min=lo, lr_max=hi)
                       for lo, hi in c.alrao_ranges]
            trials += [trial(alrao_variant_name(v), "alrao",
                             **{k: int(x) if k == "n_heads" else float(x) for k, x in v.items()})
                       for v in c.alrao_variants]
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
    # the screening strategies run end to end (report.anytime.strategy_report); {} if none
    strategies: dict[str, Any] = field(default_factory=dict)
    # the stage-2 methods head to head (report.samplers.method_report); {} if none
    stage2_methods: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: json_value(v) for k, v in r.items()} for r in frame.to_dict("records")]

        out: dict[str, Any] = {"space": self.space, "run_ids": self.run_ids,
                               "wall_s": self.wall_s, "by_momentum": {}}
        for m, rep in self.reports.items():
            out["by_momentum"][str(m)] = {
                k: rows(v) if isinstance(v, pd.DataFrame) else {
                    kk: json_value(vv) for kk, vv in v.items()} for k, v in rep.items()}
        for key in ("strategies", "stage2_methods"):
            if rep := getattr(self, key):
                out[key] = {k: rows(v) if isinstance(v, pd.DataFrame) else {
                    kk: json_value(vv) for kk, vv in v.items()} for k, v in rep.items()}
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
    progress: Progress | None = None,
    resume: bool = False,
    trainable: Trainable | None = None,
) -> CompareResult:
    """Runs (or, with ``resume``, finishes) the comparison and writes its report (see the
    module docstring). The arguments are :func:`~alrao_tune.tune.screen.screen`'s, plus
    ``seeds`` (the number of seeds; default ``compare.seeds``)."""
    if not isinstance(space, SearchSpace):
        space = load_space(space, overrides)
    seed_list = list(range(seeds)) if seeds is not None else list(space.compare.seeds)
    archs = space.architectures_resolved()
    preflight(space, archs)
    configs = compare_trials(space, seed_list)
    params = {"seeds": seed_list, "n_runs": len(configs), "n_architectures": len(archs)}

    def body(p: Pipeline, parent: str) -> CompareResult:
        return _compare(p, parent, space, configs, len(archs), seed_list, output)

    return run_pipeline(
        "compare", space, configs, body, name=f"compare {space.name}", params=params,
        stage_labels=("compare",), tracking_uri=tracking_uri, storage=storage,
        address=address, resume=resume, progress=progress, trainable=trainable)


def _compare(p: Pipeline, parent: str, space: SearchSpace, configs: list[dict[str, Any]],
             n_archs: int, seed_list: list[int], output: str | Path | None) -> CompareResult:
    """The comparison inside the pipeline driver: one Tune experiment, then its report."""
    from ray import tune

    p.say(f"compare: {n_archs} architectures x {len(seed_list)} seed(s): {len(configs)} runs")
    t0 = time.perf_counter()
    job = TuneJob(name="compare", param_space={"trial": tune.grid_search(configs)},
                  storage=p.root, resources=space.resources.model_dump(),
                  metric="best_val_loss", mode="min")
    trials = p.stage(job, parent, "compare", name_fn=_name, total=len(configs), what="runs",
                     log_table=False)
    trials, curves = _curves(p.tree, trials, _min_epochs(space))
    result = CompareResult(space.name, trials, build_reports(trials, space),
                           {"compare": parent}, time.perf_counter() - t0, curves)
    c = space.compare
    if c.strategies or c.stage2_methods:
        from alrao_tune.tune import strategies

        ctx = strategies.StrategyContext(space, p.tree, parent, p.root / "strategies", p.say,
                                         _min_epochs(space))
        if c.strategies:
            result.strategies = strategies.run_strategies(ctx, trials)
        if c.stage2_methods:
            result.stage2_methods = strategies.run_stage2_methods(ctx, trials)
        result.wall_s = time.perf_counter() - t0
    _log(p.tree, parent, result)
    if output is not None:
        write_outputs(result, Path(output), p.tree)
    return result


def _min_epochs(space: SearchSpace) -> int:
    """The compare's minimum epochs before early stopping (default: training's)."""
    c = space.compare
    return c.min_epochs if c.min_epochs is not None else space.training.min_epochs


def _curves(tree: Any, trials: pd.DataFrame, area_epochs: int
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Learning curves read back from MLflow: ``trials`` with a ``train_area`` column (the
    training-curve area of each Alrao run over its first ``area_epochs`` epochs, see
    :func:`report_compare.curve_area`) and a ``val_at_epoch`` column (the validation loss
    of each ``alrao`` run at epoch ``area_epochs``, the minimum epochs), and the per-epoch
    validation loss of the first seed's grid and Alrao runs (``report_compare.curves_data``).
    """
    def history(run_id: Any, key: str) -> list[tuple[int, float]]:
        if not isinstance(run_id, str) or not run_id:
            return []
        return sorted((m.step, m.value) for m in tree.client.get_metric_history(run_id, key))

    area = pd.Series(math.nan, index=trials.index)
    at_epoch = pd.Series(math.nan, index=trials.index)
    for i, row in trials[trials["method"] == "alrao"].iterrows():
        values = [v for _, v in history(row["run_id"], "train_loss")]
        if values:
            area[i] = report_compare.curve_area(values, area_epochs or None)
        if row["proxy"] == "alrao" and (val := [v for _, v in history(row["run_id"],
                                                                       "val_loss")]):
            at_epoch[i] = report_compare.value_at_epoch(val, area_epochs or None)
    records = []
    if len(trials):
        first = trials[(trials["seed"] == trials["seed"].min())
                       & trials["proxy"].isin(["sgd", "alrao"])]
        for row in first.itertuples():
            label = "alrao" if row.proxy == "alrao" else f"sgd_m{row.momentum:g}"
            records += [{"arch": row.arch, "proxy": label, "lr": row.lr, "epoch": step,
                         "val_loss": v} for step, v in history(row.run_id, "val_loss")]
    return (trials.assign(train_area=area, val_at_epoch=at_epoch),
            report_compare.curves_data(records))


def _name(trial: Any) -> str:
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
    if result.strategies:
        from alrao_tune.report import anytime

        tree.log_metrics(run_id, anytime.strategy_metrics(result.strategies))
        tree.log_text(run_id, anytime.strategies_markdown(result.strategies),
                      "report-strategies.md")
    if result.stage2_methods:
        from alrao_tune.report import samplers

        rep = result.stage2_methods
        tree.log_text(run_id, samplers.methods_markdown(rep), "report-stage2-methods.md")
        tree.log_metrics(run_id, {
            f"stage2_method/{stages.safe_name(row.method)}/{name}": float(getattr(row, name))
            for row in rep["table"].itertuples()
            for name in ("trials_mean", "epochs_mean", "regret_after_1")
            if math.isfinite(float(getattr(row, name)))})


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
    if result.strategies:
        _write_strategies(result, output, tree)
    if result.stage2_methods:
        from alrao_tune.report import samplers

        rep = result.stage2_methods
        (output / "report-stage2-methods.md").write_text(samplers.methods_markdown(rep))
        rep["curves"].to_csv(output / "stage2-methods-curves.csv", index=False)
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


def _write_strategies(result: CompareResult, output: Path, tree: Any | None) -> None:
    """``report-strategies.md``, ``strategies-curves.csv`` and the anytime-curves figure."""
    from alrao_tune.report import anytime, figures

    rep = result.strategies
    (output / "report-strategies.md").write_text(anytime.strategies_markdown(rep))
    rep["curves"].to_csv(output / "strategies-curves.csv", index=False)
    points = anytime.curve_points(rep["curves"], rep["grid"]["seconds"])
    if len(points):
        figures.anytime_curves(points, output / "anytime-curves.png", rep["truth"]["target"])
        if tree is not None:
            tree.log_artifact(result.run_ids["compare"], output / "anytime-curves.png",
                              "figures")
