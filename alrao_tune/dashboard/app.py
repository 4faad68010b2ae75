"""alrao-tune dashboard: browse screenings and comparisons stored in MLflow.

Start it with ``alrao-tune ui`` (also serves MLflow's own UI and links to it; it runs this
file with ``streamlit run``, also from an installed wheel) or, in a clone,
``streamlit run dashboards/app.py`` (a launcher of :func:`main`). The sidebar picks the
tracking URI (default: env ``ALRAO_TUNE_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///./mlflow.db``),
the MLflow UI address (env ``ALRAO_TUNE_MLFLOW_UI``, optional), the experiment and the
pipeline run. Every table and series comes from :mod:`alrao_tune.report.store` /
:mod:`alrao_tune.report.store_compare` (tested there by equality); this file only draws.
MLflow reads are cached for ``TTL_S``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from alrao_tune.report import store as rm
from alrao_tune.report import store_compare as rc

TTL_S = 30
DEFAULT_URI = "sqlite:///./mlflow.db"
LOG_X = alt.Scale(type="log")


# ------------------------------------------------------------------ cached MLflow reads
@st.cache_data(ttl=TTL_S, show_spinner=False)
def experiments(uri: str) -> pd.DataFrame:
    return rm.list_experiments(rm.connect(uri))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def runs(uri: str, experiment_id: str, kind: str) -> pd.DataFrame:
    return rm.list_runs(rm.connect(uri), experiment_id, kind)


@st.cache_data(ttl=TTL_S, show_spinner="Reading the screening ...")
def pipeline(uri: str, run_id: str) -> rm.PipelineData:
    return rm.load_pipeline(rm.connect(uri), run_id)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def trial_series(uri: str, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    client = rm.connect(uri)
    return rm.learning_curves(client, run_id), rm.posterior_series(client, run_id)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def compare_run(uri: str, run_id: str) -> rc.CompareData:
    return rc.load_compare(rm.connect(uri), run_id)


# ----------------------------------------------------------------------------- helpers
def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _link(ui: str, experiment_id: str, run_id: str, text: str = "open in MLflow") -> None:
    if url := rm.run_url(ui, experiment_id, run_id):
        st.markdown(f"[{text}]({url})")


NUMBER = {name: st.column_config.NumberColumn(format="%.4g") for name in (
    "alrao_score", "lr_eff", "best_lr", "val_loss", "val_acc", "test_loss", "test_acc",
    "trial_seconds", "value", "lr", "best_val_loss", "alrao_lr_eff")}


# ----------------------------------------------------------------------------- sidebar
def sidebar() -> tuple[str, str, str | None, str | None]:
    """The tracking URI, UI address, experiment id and pipeline run id picked."""
    bar = st.sidebar
    bar.title("alrao-tune")
    uri = bar.text_input("MLflow tracking URI", key="uri",
                         value=os.environ.get("ALRAO_TUNE_TRACKING_URI")
                         or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
    ui = bar.text_input("MLflow UI address (optional)", key="mlflow_ui",
                        value=os.environ.get("ALRAO_TUNE_MLFLOW_UI", ""))
    bar.button("Reload from MLflow", on_click=st.cache_data.clear)
    exps = experiments(uri)
    names = dict(zip(exps["experiment_id"], exps["name"]))
    exp_id = bar.selectbox("Experiment (search space)", list(names), key="experiment",
                           format_func=names.get)
    pipes = runs(uri, exp_id, "pipeline")
    labels = dict(zip(pipes["run_id"], pipes["label"]))
    run_id = bar.selectbox("Pipeline run (newest first)", list(labels), key="pipeline",
                           format_func=labels.get) if labels else None
    return uri, ui, exp_id, run_id


# ------------------------------------------------------------------------------- views
def funnel_tab(data: rm.PipelineData, ui: str) -> None:
    table = rm.funnel(data)
    top = table.iloc[0]
    cols = st.columns(4)
    cols[0].metric("Best architecture", str(top["arch"]))
    cols[1].metric("Its test accuracy", _fmt(top["test_acc"], ".3f"))
    cols[2].metric("Screened in stage 1", len(table))
    cols[3].metric("Tuned in stage 2", int(table["stage2"].sum()))
    st.dataframe(table, hide_index=True, column_config={
        **NUMBER, "stage2": st.column_config.CheckboxColumn("stage 2"),
        "alrao_score": st.column_config.NumberColumn("Alrao score", format="%.4g")})
    st.caption(f"Pipeline run {data.run_id} ({data.status}); read from {data.source}. "
               "Stage 1 ranks every architecture by one Alrao run (alrao_score, lower is "
               "better for a loss); stage 2 tunes the learning rate of the top-k "
               "(best_lr, and the best trial's validation and test metrics).")
    _link(ui, data.experiment_id, data.run_id, "open the pipeline run in MLflow")


def trial_tab(uri: str, data: rm.PipelineData, ui: str) -> None:
    choices = rm.trial_choices(data)
    if choices.empty:
        st.info("This screening has no trial runs to show.")
        return
    labels = dict(zip(choices["run_id"], choices["label"]))
    run_id = st.selectbox("Trial", list(labels), format_func=labels.get, key="trial")
    curves, posterior = trial_series(uri, run_id)
    _link(ui, data.experiment_id, run_id, "open this trial in MLflow")
    left, right = st.columns(2)
    with left:
        st.subheader("Learning curves")
        losses = [c for c in ("train_loss", "val_loss") if c in curves]
        if losses:
            st.line_chart(curves, x="epoch", y=losses, y_label="loss")
        if "val_acc" in curves:
            st.line_chart(curves, x="epoch", y="val_acc", y_label="validation accuracy")
    with right:
        st.subheader("Switch posterior per head")
        if posterior.empty:
            st.info("No switch posterior: this trial is not an Alrao run.")
            return
        order = list(dict.fromkeys(posterior.sort_values("head")["label"]))
        chart = alt.Chart(posterior).mark_line().encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("posterior:Q", scale=alt.Scale(domain=[0, 1]), title="posterior"),
            color=alt.Color("label:N", sort=order, title="head (its lr)",
                            scale=alt.Scale(scheme="viridis")))
        st.altair_chart(chart, key="posterior_chart")
        eff = rm.effective_lr(posterior)
        st.altair_chart(alt.Chart(eff).mark_line(color="black").encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("lr_eff:Q", scale=alt.Scale(type="log"), title="effective lr")),
            key="lr_eff_chart")
        st.caption("Effective learning rate exp(Σₖ pₖ log lrₖ) of the switch-averaged heads.")


def stage2_tab(data: rm.PipelineData) -> None:
    points, marks = rm.lr_sensitivity(data)
    if points.empty:
        st.info("Stage 2 did not run in this screening (stage2.enabled: false, or it "
                "failed before its first trial).")
        return
    ok = points.dropna(subset=["value"])
    base = alt.Chart(ok).encode(x=alt.X("lr:Q", scale=LOG_X, title="learning rate"),
                                y=alt.Y("value:Q", title="best validation loss"),
                                color=alt.Color("arch:N", title="architecture"))
    rules = alt.Chart(marks.dropna(subset=["alrao_lr_eff"])).mark_rule(
        strokeDash=[5, 4]).encode(x="alrao_lr_eff:Q", color="arch:N",
                                  tooltip=["arch", "alrao_lr_eff"])
    st.altair_chart(base.mark_line(opacity=0.5) + base.mark_point(filled=True) + rules,
                    key="stage2_chart")
    st.caption("Each point is one Optuna trial; the dashed line is the architecture's Alrao "
               "effective learning rate from stage 1 (the first trial starts there).")
    failed = points[points["value"].isna()]
    if len(failed):
        st.warning(f"{len(failed)} stage-2 trial(s) failed or diverged: "
                   + ", ".join(f"{r.arch} at lr {r.lr:.3g} ({r.status})"
                               for r in failed.itertuples()))
    st.dataframe(marks, hide_index=True, column_config=NUMBER)


def compare_tab(uri: str, exp_id: str, ui: str) -> None:
    comps = runs(uri, exp_id, "compare")
    if comps.empty:
        st.info("No comparison in this experiment: `alrao-tune compare SPACE.yaml` measures "
                "the Alrao proxy against grid-searched SGD.")
        return
    labels = dict(zip(comps["run_id"], comps["label"]))
    run_id = st.selectbox("Compare run", list(labels), format_func=labels.get, key="compare")
    data = compare_run(uri, run_id)
    momentum = st.selectbox("Ground truth: SGD momentum", rc.compare_momenta(data),
                            key="momentum")
    agree = rc.rank_agreement(data, momentum)
    saved = rc.compute_saved(data, momentum)
    cols = st.columns(4)
    cols[0].metric("Kendall τ (Alrao vs grid)", _fmt(agree["tau"], ".2f"))
    cols[1].metric("Spearman ρ", _fmt(agree["rho"], ".2f"))
    cols[2].metric("Noise ceiling τ", _fmt(agree["noise_ceiling_tau"], ".2f"))
    share = saved.get("share_of_grid")
    cols[3].metric("Pipeline cost / grid", _fmt(100 * share, ".0f") + " %"
                   if isinstance(share, (int, float)) else "–")
    scatter = rc.proxy_scatter(data, momentum)
    finite = scatter[scatter["finite"]]
    base = alt.Chart(finite).encode(
        x=alt.X("truth:Q", title="best SGD validation loss over the grid"),
        y=alt.Y("proxy:Q", title="Alrao validation loss"), tooltip=["arch", "proxy", "truth"])
    st.altair_chart(base.mark_point(filled=True, size=60)
                    + base.mark_text(align="left", dx=6).encode(text="arch:N"),
                    key="compare_scatter")
    if len(finite) < len(scatter):
        st.caption("Not drawn (diverged): " + ", ".join(scatter.loc[~scatter["finite"],
                                                                    "arch"]))
    if len(data.curves):
        st.subheader("Learning curves at every grid rate (the paper's Figure 2)")
        arch = st.selectbox("Architecture", sorted(data.curves["arch"].unique()),
                            key="curves_arch")
        curves = rc.compare_curves(data, momentum, arch)
        st.altair_chart(alt.Chart(curves).mark_line().encode(
            x=alt.X("epoch:Q"), y=alt.Y("val_loss:Q", title="validation loss (first seed)",
                                         scale=alt.Scale(type="log")),
            color=alt.Color("run:N"), tooltip=["run", "epoch", "val_loss"]),
            key="compare_curves")
    st.subheader("Table 1")
    st.dataframe(rc.compare_table(data, momentum, "table1"), hide_index=True,
                 column_config=NUMBER)
    st.subheader("Ranking fidelity of each cheap proxy")
    st.dataframe(rc.compare_table(data, momentum, "fidelity"), hide_index=True)
    st.subheader("Compute")
    if saved:
        st.write(f"Two-stage pipeline (top {saved.get('k')}): picks **{saved.get('pick')}**, "
                 f"grid's best is **{saved.get('grid_best')}**, regret "
                 f"{_fmt(saved.get('regret_acc_points'), '.2f')} accuracy points, at "
                 f"{_fmt(100 * share if isinstance(share, float) else None, '.0f')} % of the "
                 "grid's trial-seconds.")
    st.dataframe(rc.compare_table(data, momentum, "costs"), hide_index=True)
    pipes = rc.compare_table(data, momentum, "pipelines")
    if len(pipes):
        st.caption("The pipeline for other k, with stage 2 on the whole grid or only on the "
                   "rates within a decade of Alrao's effective rate")
        st.dataframe(pipes, hide_index=True)
    _strategies(data)
    _stage2_methods(data)
    _link(ui, data.experiment_id, run_id, "open the compare run in MLflow")


def _strategies(data: rc.CompareData) -> None:
    tables = rc.strategy_tables(data)
    if not tables:
        return
    st.subheader("Screening strategies at equal compute")
    points = tables["points"].assign(line=lambda f: f["strategy"] + " r" + f["repeat"].astype(str))
    st.altair_chart(alt.Chart(points).mark_line(interpolate="step-after").encode(
        x=alt.X("share:Q", title="compute (share of the grid's trial-seconds)",
                scale=alt.Scale(type="log")),
        y=alt.Y("regret:Q", title="regret (test-accuracy points)"),
        color=alt.Color("strategy:N"), detail="line:N",
        tooltip=["strategy", "repeat", "share", "regret"]), key="strategy_curves")
    st.dataframe(tables["targets"], hide_index=True)
    st.dataframe(tables["budgets"], hide_index=True)


def _stage2_methods(data: rc.CompareData) -> None:
    table = rc.stage2_method_table(data)
    if len(table):
        st.subheader("Stage-2 methods: trials to each architecture's best grid rate")
        st.caption("within 0.5 test-accuracy points; a case that never got there counts as "
                   "its trials + 1 (`reached` of `cases` did)")
        st.dataframe(table, hide_index=True)


# -------------------------------------------------------------------------------- main
def main() -> None:
    st.set_page_config(page_title="alrao-tune dashboard", layout="wide")
    try:
        uri, ui, exp_id, run_id = sidebar()
    except rm.EmptyStoreError as err:
        st.info(str(err))
        st.stop()
    except rm.StoreError as err:
        st.error(str(err))
        st.stop()
    st.title("Which architecture to keep?")
    tabs = st.tabs(["Funnel", "Trial", "Stage 2", "Compare"])
    data: rm.PipelineData | None = None
    if run_id is None:
        tabs[0].info("No screening in this experiment yet: run `alrao-tune screen "
                     "SPACE.yaml`. The Compare tab shows its comparisons.")
    else:
        try:
            data = pipeline(uri, run_id)
        except rm.StoreError as err:
            tabs[0].error(str(err))
    for tab, view in zip(tabs[:3], (lambda: funnel_tab(data, ui),
                                    lambda: trial_tab(uri, data, ui),
                                    lambda: stage2_tab(data))):
        with tab:
            if data is not None:
                _guarded(view)
            elif tab is not tabs[0]:
                st.info("Nothing to show: pick a screening with results in the sidebar.")
    with tabs[3]:
        _guarded(lambda: compare_tab(uri, exp_id, ui))


def _guarded(view: Any) -> None:
    """Runs one view; a store problem becomes a message in its tab, not a traceback."""
    try:
        view()
    except rm.StoreError as err:
        st.error(str(err))


if __name__ == "__main__":  # `streamlit run` runs this file as __main__
    main()
