"""Pure functions from trial tables to reports (tested by equality), and what draws them.

Modules: ``screening`` (stage-1 proxy scores, stage-2 bests, the leaderboard), ``compare``
(the compare job's tables), ``ranking`` and ``fidelity`` (rank statistics of a proxy
against the truth), ``figures`` (matplotlib drawings of those tables), ``store`` and
``store_compare`` (the dashboard's tables: read from MLflow, then pure views).
Nothing is imported here: import the module you need.
"""
