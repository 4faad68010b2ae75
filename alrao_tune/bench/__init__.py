"""Benchmarks that print figures (``alrao-tune bench ...``): the Alrao step and training-loop
overhead (:mod:`.overhead`) and the fault-injection soak of the Tune + MLflow path
(:mod:`.soak`)."""
