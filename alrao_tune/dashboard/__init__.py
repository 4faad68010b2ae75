"""The dashboard: the Streamlit app (draws only; its tables come from
:mod:`alrao_tune.report.store`) and ``alrao-tune ui`` (:mod:`.launch`), which serves it
next to MLflow's own UI."""
