"""The dashboard from a clone: ``streamlit run dashboards/app.py`` (``alrao-tune ui`` serves the
same app, :mod:`alrao_tune.dashboard.app`, next to MLflow's UI)."""

from alrao_tune.dashboard.app import main

main()
