"""Names shared by light and heavy modules, defined once (imports nothing heavy).

The search-space validator (yaml + pydantic only) and the dashboard (no torch, no Ray)
need the same names as the modules that train, tune and log: dataset and family names,
the trial table's columns, the MLflow tag names and result keys, the checkpoint file name.
They live here so that no module keeps a copy in sync by hand.
"""

from __future__ import annotations

import math

# ------------------------------------------------------------------------ known names
# The datasets of ``alrao_tune.data`` (the loaders there are keyed by these names).
DATASETS = ("mnist1d", "digits", "cifar10", "text", "synthetic", "blobs")
PATH_DATASETS = ("cifar10", "text")  # need dataset.options.path
# The architecture families of ``alrao_tune.zoo`` (its option schemas are keyed by these).
FAMILIES = ("mlp", "cnn1d", "cnn2d", "mobilenet", "inception", "resnet", "gru", "lstm",
            "cnn_gru", "transformer")
# The learning-rate schedules of ``alrao_tune.train.schedule`` and their options.
SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("step_size", "gamma"),
    "cosine": ("eta_min_factor",),
    "cyclic": ("base_lr_factor", "step_size_epochs"),
    "onecycle": ("max_lr_factor", "pct_start", "div_factor", "final_div_factor"),
}

# The learning-rate-free methods of ``alrao_tune.train.optimizers`` (package defaults).
LR_FREE_METHODS = ("prodigy", "dadapt_sgd", "dadapt_adam", "schedulefree_sgd",
                   "schedulefree_adamw")
# What a screening's stage 1 can train each architecture with (``stage1.proxy``).
STAGE1_PROXIES = ("alrao", "adam", *LR_FREE_METHODS)
# The screening strategies ``compare`` runs end to end (``compare.strategies``); besides
# these, ``two_stage_<proxy>`` screens with another stage-1 proxy.
STRATEGIES = ("two_stage", "asha", "asha_tpe", "random")
STAGE2_SAMPLERS = ("tpe", "gp", "random", "bracket")  # stage2.sampler
# ``compare.alrao_variants``: the Alrao settings a variant may change, and their short names
ALRAO_VARIANT_KEYS = {"lr_min": "min", "lr_max": "max", "head_lr_min": "hmin",
                      "head_lr_max": "hmax", "n_heads": "K", "theta": "theta"}


def alrao_variant_name(variant: dict[str, float]) -> str:
    """The proxy name of an Alrao variant: ``alrao_`` + its settings in
    :data:`ALRAO_VARIANT_KEYS` order, e.g. ``{"n_heads": 3}`` -> ``alrao_K3``,
    ``{"head_lr_max": 10, "theta": 0.99}`` -> ``alrao_hmax10_theta0.99``."""
    parts = [f"{short}{variant[key]:g}" for key, short in ALRAO_VARIANT_KEYS.items()
             if key in variant]
    return "_".join(["alrao", *parts])


def parse_stage2_method(name: str) -> dict[str, object]:
    """``<sampler>[:<startup trials>][+asha]`` as ``{"sampler", "startup_trials",
    "scheduler"}``; ValueError naming the problem and the form otherwise."""
    form = ("a stage-2 method is <sampler>[:<startup trials>][+asha] with <sampler> one of "
            f"{', '.join(STAGE2_SAMPLERS)} (e.g. tpe, tpe:3, gp:3, bracket+asha)")
    head, plus, tail = str(name).partition("+")
    if plus and tail != "asha":
        raise ValueError(f"{name!r}: only '+asha' may follow the sampler; {form}")
    sampler, colon, startup = head.partition(":")
    if sampler not in STAGE2_SAMPLERS:
        raise ValueError(f"{name!r}: unknown sampler {sampler!r}; {form}")
    n: int | None = None
    if colon:
        if sampler not in ("tpe", "gp") or not startup.isdigit() or int(startup) < 1:
            raise ValueError(f"{name!r}: startup trials are a positive integer after tpe "
                             f"or gp; {form}")
        n = int(startup)
    return {"sampler": sampler, "startup_trials": n, "scheduler": "asha" if plus else "none"}


# ------------------------------------------------------------------------- trial table
# One row per Tune trial (``alrao_tune.tune.runner.trials_frame``, and the dashboard's
# rebuild from MLflow runs).
TRIAL_COLUMNS = (
    "trial_id", "stage", "proxy", "arch", "method", "seed", "status", "best_val_loss",
    "best_val_acc", "best_best_head_val_loss", "test_loss", "test_acc", "lr_eff", "epochs",
    "time_total_s", "n_params", "lr", "momentum", "weight_decay", "error", "run_id",
    "node_id",
)
BAD_STATUSES = ("diverged", "error")  # a trial that produced no usable score

# ------------------------------------------------------------------------- MLflow tags
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "alrao_tune.kind"  # pipeline | stage1 | stage2 | compare
TRIAL_ID_TAG = "alrao_tune.trial_id"
ERROR_TAG = "alrao_tune.error"
LAST_ERROR_TAG = "alrao_tune.last_error"
FAILURES_TAG = "alrao_tune.failures"
STOPPED_TAG = "alrao_tune.stopped_early"
LAST_STEP_TAG = "alrao_tune.last_step"
NONFINITE_TAG = "alrao_tune.nonfinite_values"
REPLAYED_TAG = "alrao_tune.replayed_results"
BACKFILLED_TAG = "alrao_tune.backfilled_epochs"
ORPHAN_TAG = "alrao_tune.orphaned"
MODEL_TAG = "alrao_tune.model_uri"  # on a pipeline run: its winner, ``models:/<model id>``
STUDIES_TAG = "alrao_tune.optuna_studies"  # on a stage-2 run: JSON {arch: study name}
OPTUNA_STORAGE_TAG = "alrao_tune.optuna_storage"  # on a stage-2 run: the storage URL
MODEL_NAME = "model"  # the logged winner's name (``mlflow.pytorch.log_model(name=...)``)
WINNER_PREFIX = "winner/"  # the winner's metrics on the pipeline run: ``winner/test_acc``

# -------------------------------------------------------------- trial results, checkpoints
# The trainer state file inside every Tune trial checkpoint folder.
CHECKPOINT_FILE = "trainer.pt"
# In a result: per-step values ``{name: [[step, value], ...]}`` (the switch posteriors).
STEP_METRICS_KEY = "step_metrics"
# In the first report after a restore: the metrics of every epoch the checkpoint holds (as
# reported then). The MLflow callback logs those past the run's last logged step: a
# SIGKILL just after Tune deleted the checkpoint its saved state names makes the trial
# continue from a newer one, whose epochs MLflow may not have (``tune/checkpoints.py``).
RESTORED_KEY = "restored_records"


def head_key(k: int) -> str:
    """Metric-name suffix of Alrao head ``k``: ``head_00``, ``head_01``, ..."""
    return f"head_{k:02d}"


def head_rates(n_heads: int, lr_min: float, lr_max: float) -> list[float]:
    """Alrao's head learning rates ``exp(linspace(log lr_min, log lr_max, K))`` in float64;
    one head gets the geometric mean. The same formula as
    ``alrao_tune.alrao.heads.head_learning_rates`` (float32 tensors; a test checks they
    agree), for readers that do not import torch."""
    lo, hi = math.log(lr_min), math.log(lr_max)
    if n_heads == 1:
        return [math.exp(0.5 * (lo + hi))]
    return [math.exp(lo + (hi - lo) * i / (n_heads - 1)) for i in range(n_heads)]
